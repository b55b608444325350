"""A real SMTP server on a loopback port that keeps every mail it is sent, for the notification tests.

Speaks the part of SMTP (RFC 5321) that ``smtplib`` uses to send plain mail: EHLO/HELO, MAIL,
RCPT, DATA (dot-stuffed, ending in ``<CRLF>.<CRLF>``), RSET, NOOP, QUIT. No TLS and no login, so
the Airflow connection pointing at it sets ``disable_ssl`` and ``disable_tls``.
"""

from __future__ import annotations

import email
import email.header
import json
import socketserver
import threading
from dataclasses import dataclass
from email.message import Message


@dataclass(frozen=True)
class ReceivedMail:
    sender: str
    recipients: tuple[str, ...]
    message: Message

    @property
    def subject(self) -> str:
        return str(email.header.make_header(email.header.decode_header(self.message["Subject"])))

    @property
    def text(self) -> str:
        """The decoded bodies of every text part, joined."""
        parts = [part for part in self.message.walk() if part.get_content_maintype() == "text"]
        return "\n".join(part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8") for part in parts)


class _Session(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        sink: SmtpSink = self.server.sink  # type: ignore[attr-defined]
        sender, recipients = "", []
        self.reply("220 smtp-sink ready")
        while line := self.rfile.readline():
            command = line.decode().rstrip("\r\n")
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 smtp-sink")
            elif verb == "MAIL":
                sender, recipients = command.partition(":")[2].strip().strip("<>"), []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(command.partition(":")[2].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                sink.received.append(ReceivedMail(sender, tuple(recipients), email.message_from_bytes(b"".join(lines))))
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply(f"502 {verb} not implemented")


class SmtpSink:
    """``with SmtpSink() as sink:`` serves on ``127.0.0.1:sink.port``; ``sink.received`` holds the mail."""

    def __init__(self) -> None:
        self.received: list[ReceivedMail] = []
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Session)
        self._server.daemon_threads = True
        self._server.sink = self  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]

    def connection_env(self, conn_id: str) -> dict[str, str]:
        """The ``AIRFLOW_CONN_*`` variable of an Airflow SMTP connection to this sink."""
        extra = {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com", "timeout": 10}
        conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": self.port, "extra": extra}
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}

    def __enter__(self) -> SmtpSink:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

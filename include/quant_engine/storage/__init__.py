"""Where every part of the engine keeps bytes: atomic local writes and one file-system seam for local disk and S3."""

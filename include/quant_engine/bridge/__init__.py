"""The WebSocket bridge: live ticks in, the offline pipeline's features, model signals out.

``feed_server`` replays history in yfinance's streaming wire format, ``feed_client`` reads any such
feed and survives drops, the state handler turns ticks into bars, features, regimes and predictions,
and the publisher serves validated signals to subscribers.
"""

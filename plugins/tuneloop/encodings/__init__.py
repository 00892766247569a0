"""Data only: tiktoken rank files shipped with tuneloop (see README.md here; read by :mod:`tuneloop.tokens`)."""

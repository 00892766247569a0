"""Serving that honours the deployment strategy: which model version answers a request, and what it served.

:mod:`tuneloop.serving.routing` splits traffic between production and a canary by a stable hash of a request
key, so a user stays on one arm for the whole test.
"""

"""Local stand-ins for what cannot exist on a test machine, each speaking the real protocol to the real client."""

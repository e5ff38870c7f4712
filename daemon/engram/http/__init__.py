"""The HTTP gateway: engram's methods and OpenAI-compatible endpoints on a loopback TCP port."""

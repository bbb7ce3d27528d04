"""Ray Serve apps that host the feedback model and the judge behind an OpenAI-compatible API."""

"""OpenAI-compatible endpoints: one retry policy, one rate limit per run, every call's usage recorded."""

"""Test kit pieces that stand in for the outside world (remote LLM vendors) so tests and benchmarks run offline."""

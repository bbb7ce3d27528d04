"""Synthesis: teacher and student agents turn educational texts into assignment, flawed answer and feedback."""

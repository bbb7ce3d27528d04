"""Judging feedback: LLM judges over endpoints, human ratings, and how well the two agree."""

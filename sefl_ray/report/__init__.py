"""The run report: one HTML file that shows every stage of a run, read from the stages' outputs."""

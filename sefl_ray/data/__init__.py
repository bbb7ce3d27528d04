"""What stages hand each other: the synthesized record, its SFT views, the SEFL-compatible export."""

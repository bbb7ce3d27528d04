"""`sefl-ray export`: synthesized records -> a SEFL-compatible Hugging Face DatasetDict with a card."""

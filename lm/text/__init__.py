"""Reading raw text from many formats and turning it into clean, deduplicated documents."""

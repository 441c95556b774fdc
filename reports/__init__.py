"""The read side: monthly statements and usage reports."""

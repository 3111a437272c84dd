"""Submission validator for Parameter Golf records folders and pgolf run directories (static checks)."""

"""placeholder filled below."""

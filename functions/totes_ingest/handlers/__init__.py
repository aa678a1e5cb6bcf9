"""Lambda entry points: parse the event, build clients, call one library function."""

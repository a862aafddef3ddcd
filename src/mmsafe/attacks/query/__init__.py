"""query-based black-box attacks: a search over candidate inputs scored by a judge on the target's answers;
one method per file."""

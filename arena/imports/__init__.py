"""``arena import``: bring battles that happened elsewhere (public battle logs) into the database,
marked with their source, so the leaderboard can rank them alone or together with live votes."""

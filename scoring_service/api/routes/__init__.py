"""Routes: scoring (documented here, served by ``api.endpoints``), explanations, admin, health."""

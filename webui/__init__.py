"""Flask app factory, blueprints, SSE stream and the bridgescope CLI."""

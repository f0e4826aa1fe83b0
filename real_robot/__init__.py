"""Real-arm deployment (policy server, safety layer, teleoperation, recording to RLDS). Not built yet: see issue 7."""

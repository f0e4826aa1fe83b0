"""Real-arm deployment: the Robot protocol and drivers, SimArm, the policy server and client, the safety
layer, teleoperation, and recording every episode to RLDS. See "Deploy on a real arm" in README.md.

Entry points: `python -m datamil.real_robot.serve` (GPU machine), `python -m datamil.real_robot.run` and
`python -m datamil.real_robot.teleop` (robot computer). Vendor SDKs are imported only by the driver in use.
"""

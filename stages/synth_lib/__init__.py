"""The synth stage's library: teachers, GSM8K annotation converter, hygiene, style rewrites."""

from modelhall.cli import app

app()

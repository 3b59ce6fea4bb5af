"""The ``modelhall`` command."""

import typer

from modelhall.cli import accounts, bundles, gallery, maintenance, models, runs, server, sharing

app = typer.Typer(help="Share trained models as live, reproducible demos.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command()(bundles.init)
app.command()(bundles.validate)
app.command()(bundles.schema)
app.command()(bundles.push)
app.command()(bundles.pull)
app.command()(bundles.inspect)
app.command()(accounts.login)
app.command()(server.up)
app.command()(gallery.gallery)
app.command()(models.serve)
app.command()(models.predict)
app.command()(runs.runs)
app.command()(runs.logs)
app.command()(sharing.visibility)
accounts.admin.command("gc")(maintenance.gc)
app.add_typer(accounts.admin, name="admin")
app.add_typer(models.importer, name="import")
app.add_typer(sharing.share, name="share")

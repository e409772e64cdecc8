"""``astrodag supernova``: the stages of the archive, imaging and real/bogus packages in one track."""

from __future__ import annotations

from astrodag.cli_support import add_track
from astrodag.supernova.archive import commands as archive_commands
from astrodag.supernova.imaging import commands as imaging_commands
from astrodag.supernova.realbogus import commands as realbogus_commands
from astrodag.supernova.realbogus import service_commands


def register(tracks) -> None:
    """Add the ``supernova`` track to the top-level subparsers."""
    add_track(tracks, "supernova", "supernova detection by image differencing", add_stages)


def add_stages(stages) -> None:
    """Add every supernova stage, in workflow order, to the track's subparsers."""
    archive_commands.add_stages(stages)
    imaging_commands.add_stages(stages)
    realbogus_commands.add_stages(stages)
    service_commands.add_stages(stages)

"""Screening many structures into a results database (single points, relaxations, phonons, softening), on any executor."""

from .screen import ScreenReport, job_id, screen
from .tasks import DEFAULTS, UNITS, params_for, screen_chunk

__all__ = ["DEFAULTS", "UNITS", "ScreenReport", "job_id", "params_for", "screen", "screen_chunk"]

"""Chapters: their declarations (:mod:`.catalog`), parameters (:mod:`.params`), the in-notebook set-up
(:mod:`.context`) and the papermill runner (:mod:`.runner`)."""

from .catalog import CHAPTERS, get_chapter, register
from .context import ChapterContext, seed_everything, start
from .params import Chapter, Param, ParameterError

__all__ = [
    "CHAPTERS", "Chapter", "ChapterContext", "Param", "ParameterError",
    "get_chapter", "register", "seed_everything", "start",
]

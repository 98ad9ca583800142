"""The book's chapters and their parameters: the one declaration everything else reads.

``prefdyn list`` prints this catalog, ``prefdyn run`` validates against it, each chapter validates its own
namespace against it (:func:`prefdyn.chapters.start`), and a test checks that every chapter's
``parameters`` cell assigns exactly these names with these defaults. Order of registration = order in the
book. Chapter ids follow ``shared/BOOK_PLAN.md``.
"""

from __future__ import annotations

from .params import Chapter, Param, ParameterError

CHAPTERS: dict[str, Chapter] = {}


def register(chapter: Chapter) -> Chapter:
    """Add ``chapter`` to the catalog (ids are unique)."""
    if chapter.id in CHAPTERS:
        raise ValueError(f"chapter {chapter.id!r} registered twice")
    CHAPTERS[chapter.id] = chapter
    return chapter


def get_chapter(chapter_id: str) -> Chapter:
    """The chapter called ``chapter_id``, or a one-line :class:`ParameterError` listing the ids."""
    try:
        return CHAPTERS[chapter_id]
    except KeyError:
        raise ParameterError(
            f"unknown chapter '{chapter_id}' (available: {', '.join(CHAPTERS) or 'none'})"
        ) from None


# ------------------------------------------------------------------------------------------------
# Part 1 - Theory  ([1/7])
# ------------------------------------------------------------------------------------------------
register(Chapter(
    id="dpo-margin",
    title="The DPO loss and its margin",
    part="1 Theory",
    params=[
        Param("beta", "float", 0.1, "inverse temperature β of the DPO loss (000 eq. 5)", low=0.0, low_open=True, high=100.0),
        Param("betas", "list[float]", [0.1, 0.5, 1.0, 2.0], "the β values compared in the plots", low=0.0, low_open=True, high=100.0),
        Param("margin_range", "float", 10.0, "plot the margin m over [-margin_range, margin_range]", low=0.0, low_open=True, high=1000.0),
    ],
))

# ------------------------------------------------------------------------------------------------
# Part 1 - Theory: gradients  ([2/7])
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# Part 1 - Theory: gradient fields  ([3/7])
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# Part 2 - Toy model  ([4/7])
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# Part 2 - Toy model: RLHF  ([4/7]-rlhf)
# ------------------------------------------------------------------------------------------------

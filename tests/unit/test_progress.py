"""The one duration format of every progress line (encode, tile, predict, Label Studio waits)."""

from hssal_ray._progress import duration


def test_duration_picks_the_unit_a_person_reads() -> None:
    assert [duration(s) for s in (-3, 45.4, 119, 120, 1960, 7199, 7500, 172800 + 7 * 3600 + 59)] == [
        "0 s",
        "45 s",
        "119 s",
        "2 min",
        "33 min",
        "120 min",
        "2 h 5 min",
        "2 d 7 h",
    ]

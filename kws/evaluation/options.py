"""The choices of ``kws eval``, kept free of torch so that ``kws --help`` starts fast."""

from __future__ import annotations

#: the sweep of the S4 paper's zero-shot test, widened both ways
DEFAULT_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
RESAMPLERS = ("sinc", "soxr", "decimate")
SPLIT_CHOICES = ("test", "val", "train", "all")


def parse_rates(text: str) -> list[int]:
    """'8000,16000' -> [8000, 16000]; every rate a positive whole number of Hz, no repeats."""
    rates = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            rate = int(part)
        except ValueError:
            raise ValueError(f"--rates: {part!r} is not a whole number of Hz") from None
        if rate <= 0:
            raise ValueError(f"--rates: {rate} is not a positive sample rate")
        if rate in rates:
            raise ValueError(f"--rates: {rate} is listed twice")
        rates.append(rate)
    if not rates:
        raise ValueError(f"--rates: no sample rate in {text!r}")
    return rates

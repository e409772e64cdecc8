"""Tiny synthetic real/bogus data for the classifier tests: triplets, dataset folders, pair folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from astrodag.supernova.imaging.triplets import normalise

SIZE = 63
INDEX_COLUMNS = ("split", "row", "pair_id", "sn_name", "field", "mission", "filter", "label", "source", "x", "y", "ra",
                 "dec", "significance", "augmentation")
FIELD_ROWS = 8  # consecutive rows of a split that form one field (one SN): 2 missions x 2 labels x 2


def _gaussian(size: int, x: float, y: float, sigma: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def raw_triplet(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Raw (science, reference, difference) planes: a new point source (real) or noise/a dipole (bogus)."""
    centre = size // 2
    star = 30.0 * _gaussian(size, centre + rng.uniform(-8, 8), centre + rng.uniform(-8, 8))
    reference = star + rng.normal(0.0, 1.0, (size, size))
    science = star + rng.normal(0.0, 1.0, (size, size))
    if label == 1:
        source = rng.uniform(6.0, 15.0) * _gaussian(size, centre + rng.uniform(-0.5, 0.5),
                                                    centre + rng.uniform(-0.5, 0.5))
        science += source
        difference = source + rng.normal(0.0, 1.0, (size, size))
    elif rng.random() < 0.5:
        # A misaligned star: positive and negative lobes 2 px apart.
        amplitude = rng.uniform(6.0, 15.0)
        difference = amplitude * (_gaussian(size, centre + 1, centre) - _gaussian(size, centre - 1, centre))
        difference += rng.normal(0.0, 1.0, (size, size))
    else:
        difference = rng.normal(0.0, 1.0, (size, size))
    return np.stack([science, reference, difference])


def triplets(n: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normalised float32 triplets (robust normalisation) and their labels (alternating 1, 0)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2 == 0).astype(np.int8)
    stack = np.stack([np.stack([normalise(plane) for plane in raw_triplet(label, rng, size)]) for label in labels])
    return stack.astype(np.float32), labels


def write_dataset(directory: Path, counts: dict[str, int] | None = None, seed: int = 0,
                  missions: tuple[str, ...] = ("SWIFT", "PS1"), bogus_per_real: float = 1.0) -> Path:
    """A dataset folder like the dataset stage's: ``{split}.npy``, ``index.parquet`` and ``summary.json``.

    Every ``FIELD_ROWS`` consecutive rows of a split are one field (and supernova) holding each
    mission; ``summary.json`` records ``bogus_per_real`` bogus candidates per detected SN before
    subsampling (the survey base rate), beside fakes and artefacts that do not count in it.
    """
    counts = counts or {"train": 64, "validation": 32, "test": 32}
    directory.mkdir(parents=True, exist_ok=True)
    frames = []
    for number, (split, n) in enumerate(counts.items()):
        array, labels = triplets(n, seed=seed + number)
        np.save(directory / f"{split}.npy", array)
        mission = np.array(missions)[(np.arange(n) // 2) % len(missions)]
        field = np.array([f"SN {split} {i // FIELD_ROWS}" for i in range(n)])
        frames.append(pd.DataFrame({
            "split": split, "row": np.arange(n), "pair_id": [f"{f}__{m}__1_2" for f, m in zip(field, mission)],
            "sn_name": field, "field": field, "mission": mission, "filter": "V", "label": labels.astype(np.int8),
            "source": np.where(labels == 1, "injected", "artefact"), "x": 100.0, "y": 100.0, "ra": 150.0,
            "dec": 2.0, "significance": 6.0, "augmentation": "none"}))
    index = pd.concat(frames, ignore_index=True)[list(INDEX_COLUMNS)]
    index.to_parquet(directory / "index.parquet", index=False)
    real = int(index["label"].sum())
    # The survey's stream: bogus_per_real bogus candidates per detected SN (fakes are no part of it).
    sources = {"sn": real, "injected": 3 * real, "candidate": round(bogus_per_real * real), "artefact": real,
               "reviewed": 0}
    (directory / "summary.json").write_text(json.dumps({"available_per_source": sources, "normalisation": "sky"}))
    return directory


def write_pair(directory: Path, seed: int = 0, shape: tuple[int, int] = (160, 160), n_real: int = 3,
               n_bogus: int = 3) -> pd.DataFrame:
    """Product files of a differenced pair (as the difference stage writes them) and its candidates.csv.

    Real candidates are new point sources, bogus ones dipoles; one extra candidate sits in a
    masked corner (so it must get no score). Returns the candidate table.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = np.array([[-1.0, 0.0], [0.0, 1.0]]) / 3600
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    science = rng.normal(0.0, 1.0, shape)
    reference = rng.normal(0.0, 1.0, shape)
    difference = rng.normal(0.0, 1.0, shape)
    positions = []
    for i in range(n_real + n_bogus):
        x, y = rng.uniform(35, shape[1] - 35), rng.uniform(35, shape[0] - 35)
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
        if i < n_real:
            science += 10 * blob
            difference += 10 * blob
        else:
            shifted = np.exp(-((xx - x - 2) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
            difference += 10 * (blob - shifted)
        positions.append((x, y))
    mask = np.zeros(shape, np.uint8)
    mask[:40, :40] = 4
    positions.append((10.0, 10.0))
    header = wcs.to_header()
    sources = fits.BinTableHDU.from_columns([fits.Column(name=n, format="D", array=np.zeros(1)) for n in
                                             ("x", "y", "snr")], name="SOURCES")
    psf = np.exp(-((np.mgrid[:15, :15][0] - 7) ** 2 + (np.mgrid[:15, :15][1] - 7) ** 2) / 4.5)
    primary = fits.PrimaryHDU(difference.astype(np.float32), header=header)
    primary.header["FLUXSCL"], primary.header["FLUXZPD"], primary.header["FWHM_D"] = 1.0, 1.0, 3.5
    # Each plane's pixel noise, as the difference stage records it for the sky normalisation.
    primary.header["NOISESCI"], primary.header["NOISEREF"], primary.header["NOISED"] = 1.0, 1.25, 0.8
    fits.HDUList([primary, fits.ImageHDU(science.astype(np.float32), header=header, name="SCIENCE"),
                  fits.ImageHDU(reference.astype(np.float32), header=header, name="REFERENCE"),
                  fits.ImageHDU(psf / psf.sum(), name="PSF_D"), sources]).writeto(directory / "difference.fits")
    fits.HDUList([fits.PrimaryHDU((difference * 2).astype(np.float32), header=header),
                  fits.ImageHDU(difference.astype(np.float32), name="SCORE")]).writeto(directory / "significance.fits")
    fits.PrimaryHDU(mask, header=header).writeto(directory / "mask.fits")
    x, y = np.array(positions).T
    ra, dec = wcs.pixel_to_world_values(x, y)
    candidates = pd.DataFrame({"candidate_id": np.arange(1, len(x) + 1), "x": x, "y": y, "ra": ra, "dec": dec,
                               "significance": np.linspace(20, 6, len(x)), "kept": True, "reject_reason": ""})
    candidates.to_csv(directory / "candidates.csv", index=False)
    return candidates

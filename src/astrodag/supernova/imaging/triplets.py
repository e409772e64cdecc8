"""Real/bogus triplets: (science, reference, difference) cut-outs and the split dataset.

Per pair (:func:`cut_triplets`), cut-outs of ``size`` x ``size`` pixels (63 by default) from
the ``SCIENCE`` and ``REFERENCE`` extensions and the difference D of ``difference.fits``:

* real (label 1): the supernova at its catalogue position (``source = sn``) where a kept
  candidate lies within ``match_radius_px`` (the classifier scores candidates; a faded SN
  would be a real label on an empty difference image), and each injected source
  (``injected``) that was recovered: a kept candidate within ``match_radius_px`` whose flux
  agrees with the injected one, ``|f - f_inj| <= flux_tolerance_sigma * sigma_f +
  flux_tolerance_fraction * f_inj`` (``f`` and ``sigma_f = f / significance`` from
  ``candidates.csv``: the PSF-fit flux S / F_S and its error at the S_corr peak; the fraction
  allows for the fakes' PSF differing from the subtraction's on purpose), and whose expected
  significance ``f_inj / sigma_f`` reaches the detection threshold (``supernova.detection.threshold``):
  a fake below the limit matched by a noise peak is not a source the classifier can learn.
  Fakes failing a test are dropped, by reason: ``near_sn`` (within ``match_radius_px`` of a
  catalogue supernova), ``undetected``, ``below_threshold``, ``flux_mismatch``; the counts
  are in the returned summary and in the ``.npz`` (``summary``, JSON).
* bogus (label 0): every candidate of ``candidates.csv`` (kept or rejected: ``candidate``)
  plus sampled artefacts (``artefact``): the brightest science sources (star residuals) and
  random positions in the footprint; none within ``match_radius_px`` of a real example, of
  a dropped fake, or of any catalogue supernova inside the image (the pair's own, detected or
  not, kept or rejected by a shape cut, and the other supernovae of the same field: two
  supernovae of one galaxy share images).

Cut-outs are centred on the nearest pixel; parts outside the image or masked are 0 after
normalisation; positions whose cut-out is more than ``max_masked_fraction`` masked (or
outside the image) are dropped. Normalisation (``normalisation``), per channel:

``sky`` (default)
    ``x / noise`` of the whole plane, clipped to ``[-clip, clip]``: science and reference by
    their sky noise with one photo-electron added in quadrature (``NOISESCI``, ``NOISEREF``
    of ``difference.fits``; the floor keeps a nearly empty photon-counting sky, GALEX at 0.15
    counts a pixel, from turning single photons into clipped pixels), D by its robust noise
    (``NOISED``: 1 in theory for ZOGY, 1.0-1.7 measured on the demo's pairs). The planes are
    background-subtracted already, so sky sits at 0 and the brightness of a source relative to
    the image's noise survives.
``robust``
    ``(x - median) / (1.4826 MAD)`` over the valid pixels of the cut-out, clipped to
    ``[-clip, clip]``; collapses on photon-counting data, where the MAD of a cut-out is
    about 0.
``l2``
    ``x / ||x||_2`` (braai, Duev et al. 2019), valid pixels only.

The dataset (:func:`build_dataset`) splits by field (:mod:`astrodag.supernova.imaging.fields`:
supernovae whose pairs share an observation or overlapping sky, so that no image and no patch
of sky is in two splits; all pairs of one field in one split; seeded; :func:`assign_splits` puts
every mission and ``min_fields`` fields in validation and test where the fields allow),
subsamples the bogus examples of each split to at most ``bogus_per_real`` times its real ones,
adds ``augment_copies`` augmented copies (a random non-identity flip/90-degree rotation) of each
example of the ``augment_splits``, shuffles each split and writes
``{split}.npy`` (``(n, 3, size, size)`` float32, memory-mappable, filled pair by pair through
``numpy.lib.format.open_memmap`` so the dataset never has to fit in memory), ``index.parquet``
(one row per array row, with its ``field``), ``summary.json`` (triplets, fields and missions
per split, and the ``available`` real and bogus triplets before subsampling, also per source:
the detected supernovae and the bogus candidates give the survey's base rate) and
``previews/{split}.png``.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from astrodag.errors import ConfigError, InputDataError
from astrodag.io import atomic_path, read_table, save_figure, write_json, write_table
from astrodag.settings import Settings, choice, fractions, number, optional, setting, subset
from astrodag.supernova.imaging.fields import frame_footprint, group_fields, hull_footprint
from astrodag.supernova.imaging.pipeline import pair_rng, read_products

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SOURCES = ("sn", "injected", "candidate", "artefact", "reviewed")
NORMALISATIONS = ("sky", "robust", "l2")
FAKE_DROP_REASONS = ("near_sn", "undetected", "below_threshold", "flux_mismatch")
CHANNELS = ("science", "reference", "difference")
INDEX_COLUMNS = ("split", "row", "pair_id", "sn_name", "field", "mission", "filter", "label", "source", "x", "y", "ra",
                 "dec", "significance", "augmentation")
TABLE_COLUMNS = ("label", "source", "x", "y", "ra", "dec", "significance")
# The eight symmetries of the square: k quarter turns (numpy.rot90), then an optional left-right flip.
_NOT_DETECTED = "missing: run the difference and detect stages for this pair first"
AUGMENTATIONS = tuple(f"rot{90 * k}" + ("+flip" if flip else "") for flip in (False, True) for k in range(4))


@dataclass(frozen=True)
class TripletSettings(Settings):
    """Cut-outs of one pair (config ``supernova.triplets``).

    Keys
    ----
    size : int, default 63
        Cut-out side in pixels (odd).
    match_radius_px : float, default 3.0
        A candidate within this distance of a real position is that real source, not bogus;
        no bogus example lies this close to a catalogue supernova or a fake.
    flux_tolerance_sigma : float, default 3.0
        A recovered fake's measured flux may differ from the injected one by this many of its
        errors ...
    flux_tolerance_fraction : float, default 0.3
        ... plus this fraction of the injected flux (PSF mismatch, host residuals).
    max_candidates : int, default 200
        Most significant bogus candidates cut per pair.
    star_count : int, default 10
        Brightest science sources cut as star-residual artefacts.
    random_count : int, default 10
        Random footprint positions cut as artefacts.
    normalisation : {"sky", "robust", "l2"}, default "sky"
        Per-channel normalisation (see the module notes).
    clip : float, default 30.0
        Clip of the ``sky`` and ``robust`` normalisations.
    max_masked_fraction : float, default 0.5
        Cut-outs with more invalid pixels than this fraction are dropped.
    """

    PREFIX: ClassVar[str] = "supernova.triplets"

    size: int = setting(63, number(9, 255, integer=True))
    match_radius_px: float = setting(3.0, number(0.0, low_open=True))
    flux_tolerance_sigma: float = setting(3.0, number(0.0))
    flux_tolerance_fraction: float = setting(0.3, number(0.0))
    max_candidates: int = setting(200, number(0, integer=True))
    star_count: int = setting(10, number(0, integer=True))
    random_count: int = setting(10, number(0, integer=True))
    normalisation: str = setting("sky", choice(*NORMALISATIONS))
    clip: float = setting(30.0, number(1.0))
    max_masked_fraction: float = setting(0.5, number(0.0, 1.0))

    def validate(self, prefix: str) -> None:
        if self.size % 2 == 0:
            raise ConfigError(f"{prefix}.size", f"must be odd (a centre pixel), got {self.size}")


@dataclass(frozen=True)
class DatasetSettings(Settings):
    """The triplet dataset (config ``supernova.dataset``).

    Keys
    ----
    split_fractions : mapping, default {train: 0.7, validation: 0.15, test: 0.15}
        Target fractions of triplets per split; whole fields are assigned (seeded).
    min_fields : int, default 3
        Fields wanted in each of the validation and test splits (as many as there are, leaving
        train at least one); every mission goes to train, then test, then validation first.
    bogus_per_real : float or null, default 1.0
        Bogus examples kept per real one in each split (subsampled, seeded); null keeps all.
    augment_copies : int, default 1
        Augmented copies added per example of the augmented splits.
    augment_splits : list, default [train]
        Splits that get augmented copies.
    previews : int, default 16
        Triplets drawn in ``previews/{split}.png`` (0: no previews).
    """

    PREFIX: ClassVar[str] = "supernova.dataset"

    split_fractions: dict = setting({"train": 0.7, "validation": 0.15, "test": 0.15}, fractions(*SPLITS))
    min_fields: int = setting(3, number(1, integer=True))
    bogus_per_real: float | None = setting(1.0, optional(number(0.0, low_open=True)))
    augment_copies: int = setting(1, number(0, 7, integer=True))
    augment_splits: tuple[str, ...] = setting(("train",), subset(*SPLITS))
    previews: int = setting(16, number(0, 200, integer=True))


# --------------------------------------------------------------------------------------------
# cut-outs of one pair
# --------------------------------------------------------------------------------------------


def normalise(cutout: np.ndarray, method: str = "robust", clip: float = 30.0,
              noise: float | None = None) -> np.ndarray:
    """One channel normalised (see the module notes); invalid (NaN) pixels become 0.

    ``noise`` is the plane's per-pixel noise, needed by ``sky``.
    """
    if method not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {method!r}")
    valid = np.isfinite(cutout)
    out = np.zeros(cutout.shape, np.float32)
    if not valid.any():
        return out
    values = cutout[valid].astype(np.float64)
    if method == "sky":
        if noise is None or not noise > 0:
            raise ValueError(f"the sky normalisation needs the plane's noise (> 0), got {noise!r}")
        out[valid] = np.clip(values / noise, -clip, clip)
        return out
    if method == "l2":
        norm = float(np.sqrt(np.sum(values ** 2)))
        out[valid] = values / norm if norm > 0 else 0.0
        return out
    median = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - median)))
    if not scale > 0:
        scale = float(np.std(values)) or 1.0
    out[valid] = np.clip((values - median) / scale, -clip, clip)
    return out


def cutouts(planes: list[np.ndarray], invalid: np.ndarray, x: np.ndarray, y: np.ndarray, size: int,
            method: str, clip: float, noise=None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(n, len(planes), size, size)`` cut-outs and each one's invalid-pixel fraction.

    ``noise`` holds each plane's per-pixel noise (``PairProducts.noise``), needed by ``sky``.
    """
    if method == "sky" and (noise is None or len(noise) != len(planes)):
        raise ValueError("the sky normalisation needs each plane's noise (the NOISE* cards of difference.fits: "
                         "rerun the difference stage)")
    noise = list(noise) if noise is not None else [None] * len(planes)
    half = size // 2
    ny, nx = invalid.shape
    padded_invalid = np.pad(invalid, half, constant_values=True)
    padded = [np.pad(plane, half, constant_values=np.nan) for plane in planes]
    stack = np.zeros((len(x), len(planes), size, size), np.float32)
    fraction = np.ones(len(x))
    for i, (xc, yc) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        if not (0 <= xc < nx and 0 <= yc < ny):
            continue
        window = (slice(yc, yc + size), slice(xc, xc + size))  # padded coordinates: centre at yc + half
        bad = padded_invalid[window]
        fraction[i] = bad.mean()
        for c, plane in enumerate(padded):
            stack[i, c] = normalise(np.where(bad, np.nan, plane[window]), method, clip, noise[c])
    return stack, fraction


def _far_from(points: np.ndarray, real: np.ndarray, radius: float) -> np.ndarray:
    if len(real) == 0 or len(points) == 0:
        return np.ones(len(points), bool)
    distance, _ = cKDTree(real).query(points, distance_upper_bound=radius)
    return ~np.isfinite(distance)


def _xy(rows) -> np.ndarray:
    return np.array([(x, y) for _, x, y in rows], float).reshape(-1, 2)


def classify_fakes(fakes: pd.DataFrame, candidates: pd.DataFrame, protected: np.ndarray, settings: TripletSettings,
                   threshold: float) -> np.ndarray:
    """Each fake's fate: ``"real"`` or one of ``FAKE_DROP_REASONS`` (see the module notes).

    Parameters
    ----------
    fakes : pandas.DataFrame
        ``injections.csv``: ``x, y, flux``.
    candidates : pandas.DataFrame
        ``candidates.csv``: ``x, y, flux, significance, kept``.
    protected : numpy.ndarray
        ``(n, 2)`` pixel positions of the catalogue supernovae.
    settings : TripletSettings
    threshold : float
        The detection threshold (sigma).
    """
    fate = np.full(len(fakes), "real", dtype=object)
    if len(fakes) == 0:
        return fate
    xy = fakes[["x", "y"]].to_numpy(float)
    kept = candidates[candidates["kept"].astype(bool)]
    if len(kept):
        distance, nearest = cKDTree(kept[["x", "y"]].to_numpy(float)).query(xy)
    else:
        distance, nearest = np.full(len(xy), np.inf), np.zeros(len(xy), int)
    found = distance <= settings.match_radius_px
    nearest = np.where(found, nearest, 0)
    flux = kept["flux"].to_numpy(float)[nearest] if len(kept) else np.full(len(xy), np.nan)
    significance = kept["significance"].to_numpy(float)[nearest] if len(kept) else np.full(len(xy), np.nan)
    injected = fakes["flux"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.abs(flux) / significance  # PSF-fit flux over its S/N: the flux error at the S_corr peak
        expected = injected / error
    agrees = np.abs(flux - injected) <= settings.flux_tolerance_sigma * error \
        + settings.flux_tolerance_fraction * injected
    # The first failing test names the reason.
    fate[~(expected >= threshold)] = "below_threshold"
    fate[~agrees & (fate == "real")] = "flux_mismatch"
    fate[~found] = "undetected"
    fate[~_far_from(xy, protected, settings.match_radius_px)] = "near_sn"
    return fate


def cut_triplets(pair_dir: str | Path, sn_ra: float, sn_dec: float, pair_id: str, sn_name: str, mission: str,
                 filter: str, settings: TripletSettings | None = None, seed: int = 0,
                 out: str | Path | None = None, catalog_positions=None, detection_threshold: float = 5.0) -> dict:
    """Cut the real and bogus triplets of one pair and write them as one ``.npz``.

    Parameters
    ----------
    pair_dir : str or Path
        Holds ``difference.fits``, ``significance.fits``, ``mask.fits``, ``injections.csv``
        and ``candidates.csv``.
    sn_ra, sn_dec : float
        Catalogue position of the supernova (degrees).
    pair_id, sn_name, mission, filter : str
        Recorded with every triplet.
    settings : TripletSettings, optional
    seed : int
        Seed of the random artefact positions (combined with ``pair_id``).
    out : str or Path, optional
        Output file (default ``pair_dir/triplets.npz``).
    catalog_positions : sequence of (float, float), optional
        ``(ra, dec)`` of every catalogue supernova (degrees): those inside the image are never
        bogus examples (the pair's own always counts).
    detection_threshold : float
        The detection threshold (``supernova.detection.threshold``): a fake whose expected
        significance is lower is no real example.

    Returns
    -------
    dict
        Counts per source, the number dropped for masking, the fakes' fates (``fakes``:
        ``injected``, ``real`` and ``dropped`` per reason) and the catalogue supernovae in the image.

    Notes
    -----
    The ``.npz`` holds ``cutouts`` (``(n, 3, size, size)`` float32), the columns
    ``TABLE_COLUMNS`` as arrays (``source`` as fixed-width strings), the 0-d string arrays
    ``pair_id``, ``sn_name``, ``mission``, ``filter``, ``normalisation`` and ``summary`` (the
    returned dict as JSON); it loads without pickle.
    """
    settings = settings or TripletSettings()
    pair_dir = Path(pair_dir)
    products = read_products(pair_dir)
    injections = read_table(pair_dir / "injections.csv", ("x", "y", "flux"), not_found=_NOT_DETECTED)
    candidates = read_table(pair_dir / "candidates.csv", ("x", "y", "significance", "flux", "kept"),
                            not_found=_NOT_DETECTED)
    ny, nx = products.mask.shape
    radius = settings.match_radius_px

    sn_x, sn_y = (float(v) for v in products.wcs.world_to_pixel_values(sn_ra, sn_dec))
    # The pair's own SN is in the catalogue too: one position each.
    positions = np.unique(np.array([(sn_ra, sn_dec), *(catalog_positions or [])], float).reshape(-1, 2), axis=0)
    px, py = products.wcs.world_to_pixel_values(positions[:, 0], positions[:, 1])
    protected = np.column_stack([px, py]).reshape(-1, 2)
    near_image = (protected[:, 0] > -radius) & (protected[:, 0] < nx + radius) \
        & (protected[:, 1] > -radius) & (protected[:, 1] < ny + radius)
    protected = protected[near_image & np.isfinite(protected).all(axis=1)]
    rows = []
    # Real examples are real sources that were detected: the classifier only ever sees candidates.
    # A faded SN (a science epoch long after discovery) would otherwise be labelled real on an
    # empty difference image.
    kept = candidates[candidates["kept"].astype(bool)][["x", "y"]].to_numpy(float)
    inside = 0 <= sn_x < nx and 0 <= sn_y < ny
    if not inside:
        log.warning("%s: the supernova (%.5f, %.5f) falls outside the science image", pair_id, sn_ra, sn_dec)
    elif not _far_from(kept, np.array([[sn_x, sn_y]]), radius).all():
        rows.append(("sn", sn_x, sn_y))
    else:
        log.info("%s: no kept candidate at the supernova's position; it is not cut as a real example", pair_id)
    fate = classify_fakes(injections, candidates, protected, settings, detection_threshold)
    fakes = injections[["x", "y"]].to_numpy(float).reshape(-1, 2)
    rows += [("injected", x, y) for (x, y), f in zip(fakes, fate, strict=True) if f == "real"]
    # Dropped fakes and every catalogue supernova are neither real examples nor places to cut bogus ones.
    excluded = np.concatenate([fakes[fate != "real"], protected])

    bogus = candidates.sort_values("significance", ascending=False, kind="stable")
    bogus = bogus[_far_from(bogus[["x", "y"]].to_numpy(float), np.concatenate([_xy(rows), excluded]), radius)]
    rows += [("candidate", x, y) for x, y in bogus[["x", "y"]].to_numpy(float)[:settings.max_candidates]]

    taken = np.concatenate([_xy(rows), excluded])
    stars = products.sources[["x", "y"]].to_numpy(float)
    stars = stars[_far_from(stars, taken, radius)][:settings.star_count]
    rows += [("artefact", x, y) for x, y in stars]
    rng = pair_rng(seed, pair_id)
    half = settings.size // 2
    valid = np.flatnonzero(~products.mask[half:ny - half, half:nx - half].ravel()) if ny > 2 * half \
        and nx > 2 * half else np.array([], int)
    if settings.random_count and valid.size:
        picks = valid[rng.choice(valid.size, size=min(valid.size, 4 * settings.random_count), replace=False)]
        points = np.column_stack([picks % (nx - 2 * half) + half, picks // (nx - 2 * half) + half]).astype(float)
        points = points[_far_from(points, taken, radius)][:settings.random_count]
        rows += [("artefact", x, y) for x, y in points]

    source = np.array([r[0] for r in rows], dtype="<U9")
    x = np.array([r[1] for r in rows], float)
    y = np.array([r[2] for r in rows], float)
    planes = [products.science, products.reference, products.difference]
    invalid = products.mask | ~np.isfinite(products.difference)
    stack, fraction = cutouts(planes, invalid, x, y, settings.size, settings.normalisation, settings.clip,
                              noise=products.noise)
    keep = fraction <= settings.max_masked_fraction
    dropped = {name: int(np.sum(~keep & (source == name))) for name in SOURCES}
    stack, source, x, y = stack[keep], source[keep], x[keep], y[keep]
    ra, dec = products.wcs.pixel_to_world_values(x, y) if len(x) else (np.array([]), np.array([]))
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    significance = products.significance[iy, ix].astype(float) if len(x) else np.array([])
    label = np.isin(source, ("sn", "injected")).astype(np.int8)

    counts = {name: int(np.sum(source == name)) for name in SOURCES}
    lost = {reason: int(np.sum(fate == reason)) for reason in FAKE_DROP_REASONS}
    summary = {"triplets": int(len(source)), "per_source": counts, "dropped_masked": dropped,
               "undetected_sn": int("sn" not in source and inside),
               "undetected_injected": lost["undetected"],
               "fakes": {"injected": int(len(fate)), "real": int(np.sum(fate == "real")), "dropped": lost},
               "catalog_supernovae_in_image": int(len(protected))}
    out = Path(out) if out is not None else pair_dir / "triplets.npz"
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, cutouts=stack, label=label, source=source, x=x, y=y, ra=np.asarray(ra, float),
                 dec=np.asarray(dec, float), significance=significance, pair_id=np.array(pair_id),
                 sn_name=np.array(sn_name), mission=np.array(mission), filter=np.array(filter),
                 normalisation=np.array(settings.normalisation), summary=np.array(json.dumps(summary)))
    log.info("%s: %d triplets (%s), %d dropped for masking; fakes %s", pair_id, len(source), counts,
             sum(dropped.values()), summary["fakes"])
    return summary


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


def assign_splits(counts: pd.Series, fractions_: dict[str, float], rng: np.random.Generator,
                  missions: Mapping[str, Iterable[str]] | None = None, min_fields: int = 1) -> dict[str, str]:
    """Field -> split: every mission and ``min_fields`` fields in each split where possible, then the shares.

    Parameters
    ----------
    counts : Series
        Triplets per field (the unit assigned whole; a supernova when fields are not known).
    fractions_ : dict
        Target share of the triplets per split; a split with fraction 0 gets nothing.
    rng : Generator
        Shuffles the fields (the order every step below takes them in).
    missions : mapping, optional
        Field -> the missions it holds.
    min_fields : int, default 1
        Fields wanted in each of validation and test.

    Notes
    -----
    Greedy, in passes over the shuffled fields: (1) for each mission, rarest first, one of its
    fields to each split that lacks it, train first, then test, then validation (a mission seen
    in two fields is trained and tested on, in one only trained on), as long as enough fields
    are left to give every split one; (2) one field to each split still empty; (3) fields to
    test and validation, in turn, until each holds ``min_fields`` (always leaving train at least
    one); (4) each remaining field to the split furthest below its target share.
    """
    names = list(counts.index)
    order = [names[i] for i in rng.permutation(len(names))]
    missions = {name: set(missions.get(name, ())) if missions else set() for name in names}
    total = float(counts.sum())
    targets = {split: fractions_[split] * total for split in SPLITS}
    active = [s for s in ("train", "test", "validation") if fractions_[s] > 0]
    filled = dict.fromkeys(SPLITS, 0.0)
    covered: dict[str, set] = {split: set() for split in SPLITS}
    assignment: dict[str, str] = {}

    def give(name: str, split: str) -> None:
        assignment[name] = split
        filled[split] += float(counts[name])
        covered[split] |= missions[name]

    def free() -> list[str]:
        return [name for name in order if name not in assignment]

    def leaves_room(split: str) -> bool:
        """Whether giving ``split`` one more field still leaves a field for every empty split."""
        empty = [s for s in active if s != split and s not in assignment.values()]
        return len(free()) - 1 >= len(empty)

    fields_of = {m: [n for n in order if m in missions[n]] for m in set().union(*missions.values())}
    for mission in sorted(fields_of, key=lambda m: (len(fields_of[m]), m)):
        for split in active:
            pool = [n for n in free() if mission in missions[n]]
            if pool and mission not in covered[split] and leaves_room(split):
                give(pool[0], split)
    for split in active:
        if split not in assignment.values() and free():
            give(free()[0], split)
    small = [s for s in ("test", "validation") if s in active]
    while small:
        wanting = [s for s in small if sum(v == s for v in assignment.values()) < min_fields]
        spare = free()
        keep_for_train = "train" in active and "train" not in assignment.values()
        if not wanting or len(spare) <= int(keep_for_train):
            break
        give(spare[0], min(wanting, key=lambda s: (sum(v == s for v in assignment.values()), small.index(s))))
    for name in free():
        give(name, max(active, key=lambda s: targets[s] - filled[s]))
    return assignment


def augment(cutout: np.ndarray, name: str) -> np.ndarray:
    """Apply one of ``AUGMENTATIONS`` to a ``(channels, size, size)`` cut-out."""
    k = int(name[3:].split("+")[0]) // 90
    out = np.rot90(cutout, k, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if name.endswith("+flip") else out)


def _load_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(path, "missing triplet file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            table = pd.DataFrame({column: npz[column] for column in TABLE_COLUMNS})
            for key in ("pair_id", "sn_name", "mission", "filter"):
                table[key] = str(npz[key])
            size = npz["cutouts"].shape[-1]
            # Files of the active-learning ingestion carry none: cut like the model that queued them.
            normalisation = str(npz["normalisation"]) if "normalisation" in npz.files else None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputDataError(path, f"not a triplet file written by the triplets stage: {error}") from error
    table["file"] = str(path)
    table["file_row"] = np.arange(len(table))
    table.attrs["size"] = size
    table.attrs["normalisation"] = normalisation
    return table


def build_dataset(triplet_files: list[str | Path], out_dir: str | Path, settings: DatasetSettings | None = None,
                  seed: int = 0, pairs: str | Path | pd.DataFrame | None = None) -> dict:
    """Assemble the split real/bogus dataset from per-pair triplet files (see the module notes).

    Parameters
    ----------
    triplet_files : list of str or Path
        ``triplets.npz`` of each pair.
    out_dir : str or Path
        Receives ``{train,validation,test}.npy``, ``index.parquet``, ``summary.json`` and
        ``previews/``.
    settings : DatasetSettings, optional
    seed : int
        Seed of the split, the subsampling, the augmentations and the shuffles.
    pairs : str, Path or DataFrame, optional
        ``pairs.csv`` of the archive stage: pairs that share a reference or science observation
        join one field (:mod:`astrodag.supernova.imaging.fields`). Sky overlap links fields
        without it.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    settings = settings or DatasetSettings()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    tables = [_load_table(Path(path)) for path in triplet_files]
    sizes = {t.attrs["size"] for t in tables}
    if len(sizes) > 1:
        raise InputDataError(Path(triplet_files[0]), f"triplet files have different cut-out sizes {sorted(sizes)}")
    size = sizes.pop() if sizes else 63
    methods = {t.attrs["normalisation"] for t in tables} - {None}
    if len(methods) > 1:
        mixed = {t.attrs["normalisation"]: t["file"].iloc[0] if len(t) else "" for t in tables}
        raise InputDataError(Path(triplet_files[0]), f"triplet files were cut with different normalisations "
                                                     f"({mixed}): cut every pair again with one")
    normalisation = methods.pop() if methods else None
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=[*TABLE_COLUMNS, "pair_id", "sn_name", "mission", "filter", "file", "file_row"])
    if len(table) and (table["source"] == "reviewed").any():
        # A reviewed cut-out (active learning) replaces the pair's own copy of that candidate,
        # whose label it may correct; both belong to the same SN, hence to the same split.
        key = table["pair_id"] + ":" + table["x"].round(2).astype(str) + ":" + table["y"].round(2).astype(str)
        reviewed = table["source"] == "reviewed"
        table = table[reviewed | ~key.isin(set(key[reviewed]))].reset_index(drop=True)
    field_of, links = _fields(table, size, pairs)
    table["field"] = table["pair_id"].map(field_of)
    per_field = table.groupby("field").size() if len(table) else pd.Series(dtype=int)
    missions = table.groupby("field")["mission"].unique().to_dict() if len(table) else {}
    split_of = assign_splits(per_field, settings.split_fractions, rng, missions, settings.min_fields) \
        if len(per_field) else {}
    table["split"] = table["field"].map(split_of)

    index_parts = []
    for split in SPLITS:
        part = table[table["split"] == split]
        real, bogus = part[part["label"] == 1], part[part["label"] == 0]
        if settings.bogus_per_real is not None and len(bogus) > settings.bogus_per_real * len(real):
            keep = int(math.floor(settings.bogus_per_real * len(real)))
            bogus = bogus.iloc[np.sort(rng.choice(len(bogus), size=keep, replace=False))]
        part = pd.concat([real, bogus]).assign(augmentation="none")
        if split in settings.augment_splits and settings.augment_copies:
            copies = [part.assign(augmentation=rng.choice(AUGMENTATIONS[1:], size=len(part)))
                      for _ in range(settings.augment_copies)]
            part = pd.concat([part, *copies])
        part = part.iloc[rng.permutation(len(part))].reset_index(drop=True)
        part["row"] = np.arange(len(part))
        index_parts.append(part)
        _write_split(out_dir / f"{split}.npy", part, size)
    index = pd.concat(index_parts, ignore_index=True)
    write_table(out_dir / "index.parquet", index[list(INDEX_COLUMNS)].astype({"label": "int8", "row": "int64"}))

    summary = {
        "seed": int(seed), "cutout_shape": [3, size, size], "channels": list(CHANNELS),
        "normalisation": normalisation,  # per channel, as cut by the triplets stage
        "pairs": int(table["pair_id"].nunique()) if len(table) else 0,
        "supernovae": {split: sorted(table.loc[table["split"] == split, "sn_name"].unique()) for split in SPLITS},
        "fields": {split: _field_summary(p) for split, p in zip(SPLITS, index_parts)},
        "field_members": {field: sorted(members.unique()) for field, members in table.groupby("field")["sn_name"]}
        if len(table) else {},
        "field_links": links,
        "triplets": {split: {"real": int((p["label"] == 1).sum()), "bogus": int((p["label"] == 0).sum()),
                             "total": int(len(p)),
                             "per_source": {src: int((p["source"] == src).sum()) for src in SOURCES},
                             "augmented": int((p["augmentation"] != "none").sum())}
                     for split, p in zip(SPLITS, index_parts)},
        # Before subsampling: the survey's real/bogus ratio, the deployment base rate of the metrics.
        "available": {"real": int((table["label"] == 1).sum()), "bogus": int((table["label"] == 0).sum())},
        "available_per_source": {src: int((table["source"] == src).sum()) for src in SOURCES},
        "available_per_split": {split: {"real": int(((table["split"] == split) & (table["label"] == 1)).sum()),
                                        "bogus": int(((table["split"] == split) & (table["label"] == 0)).sum())}
                                for split in SPLITS},
        "settings": settings.as_dict(),
    }
    write_json(out_dir / "summary.json", summary)
    (out_dir / "previews").mkdir(parents=True, exist_ok=True)
    if settings.previews:
        for split, part in zip(SPLITS, index_parts):
            if len(part):
                _preview(out_dir / "previews" / f"{split}.png", out_dir / f"{split}.npy", part, settings.previews, rng)
    log.info("dataset: %s triplets in %s fields", {s: v["total"] for s, v in summary["triplets"].items()},
             {s: v["n_fields"] for s, v in summary["fields"].items()})
    return summary


def _fields(table: pd.DataFrame, size: int, pairs: str | Path | pd.DataFrame | None) -> tuple[dict, dict]:
    """Pair -> field of the dataset's pairs (:func:`astrodag.supernova.imaging.fields.group_fields`).

    A pair's footprint is its cut-out frame (``difference.fits`` beside one of its triplet files),
    else the hull of its cut-out centres, grown by half a cut-out either way.
    """
    if not len(table):
        return {}, {"shared_observation": 0, "sky_overlap": 0}
    identities = read_table(pairs, ("pair_id",), not_found="missing: the pairs table of the archive stage") \
        if isinstance(pairs, (str, Path)) else pairs
    margin = size // 2
    footprints = {}
    for pair_id, rows in table.groupby("pair_id", sort=False):
        frames = (frame_footprint(Path(file).parent, margin) for file in rows["file"].unique())
        footprints[pair_id] = next((f for f in frames if f is not None), None)
        if footprints[pair_id] is None:
            footprints[pair_id] = hull_footprint(rows["x"], rows["y"], rows["ra"], rows["dec"], margin)
    return group_fields(table[["pair_id", "sn_name"]], footprints, identities)


def _field_summary(part: pd.DataFrame) -> dict:
    """Fields and missions of one split's triplets, and the fields behind each mission."""
    return {"n_fields": int(part["field"].nunique()), "fields": sorted(part["field"].unique()),
            "missions": sorted(part["mission"].unique()),
            "fields_per_mission": {m: int(rows["field"].nunique()) for m, rows in part.groupby("mission")}}


def _write_split(path: Path, part: pd.DataFrame, size: int) -> None:
    """Fill ``{split}.npy`` file by file through a memory map (bounded memory)."""
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(part), 3, size, size))
        for file, rows in part.groupby("file", sort=False):
            with np.load(file, allow_pickle=False) as npz:
                cut = npz["cutouts"]
            for row, file_row, name in zip(rows["row"], rows["file_row"], rows["augmentation"]):
                array[row] = cut[file_row] if name == "none" else augment(cut[file_row], name)
        array.flush()
        del array


def _preview(path: Path, array_path: Path, part: pd.DataFrame, count: int, rng: np.random.Generator) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array = np.load(array_path, mmap_mode="r")
    # Half real, half bogus where possible, so both classes show.
    chosen = []
    for label in (1, 0):
        rows = part.index[part["label"] == label].to_numpy()
        chosen += list(rng.choice(rows, size=min(len(rows), (count + 1) // 2), replace=False))
    chosen = chosen[:count]
    figure, axes = plt.subplots(len(chosen), 3, figsize=(4.5, 1.5 * len(chosen)), squeeze=False)
    for line, row in zip(axes, chosen):
        info = part.loc[row]
        for c, axis in enumerate(line):
            image = np.asarray(array[info["row"], c])
            low, high = np.percentile(image, [1, 99.5])
            axis.imshow(image, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(f"{'real' if info['label'] else 'bogus'}\n{info['source']}", fontsize=7)
    for c, name in enumerate(CHANNELS):
        axes[0, c].set_title(name, fontsize=8)
    save_figure(path, figure)
    plt.close(figure)

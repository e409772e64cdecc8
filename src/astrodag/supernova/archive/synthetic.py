"""A synthetic multi-mission imaging survey of the catalogue's supernovae, written as a local archive.

The survey is written in the layout the ``local`` archive backend reads, which is MAST's:

``observations.csv``
    one row per product with MAST's ``Observations`` columns plus ``size`` and ``checksum``
    (SHA-256); ``dataURL`` is relative to the survey directory;
``files/``
    the products: FITS images as archives deliver them, a mix of plain ``.fits``, gzipped
    ``.fits.gz`` and tile-compressed ``.fits.fz`` (RICE, quantised with a fixed dither seed), the
    image in the primary HDU or in an extension named ``SCI``, always with a ``DQ`` extension
    (bit 1: saturated); and one non-image product (a grism spectrum, a FITS table);
``truth.csv``
    one row per image and catalogue supernova inside it: ``obsid, sn_name, mission, filter, mjd,
    sn_ra, sn_dec, sn_injected, sn_mag, sn_flux, x, y`` (``sn_flux``: total injected flux in the
    image's data units, ``BUNIT``; ``x, y``: 0-based pixel of the catalogue position);
``summary.json``
    counts, the settings and the seed.

The sky model, per field (supernovae closer than ``field_group_arcmin`` share one, like SN 2011fe and
SN 2023ixf in M101) and per mission: a Sersic host galaxy offset from each supernova, field stars
(magnitudes from ``dN/dm ~ 10^(0.2 m)``, colours per star), bright stars that saturate, all fixed on
the sky; each image sees them through its own pointing (small offsets and roll changes between
visits), PSF (Moffat, seeing changing from visit to visit), exposure time and sky (level and
gradient), with Poisson and read noise, cosmic rays (CCD and UVOT), and clipping at ``SATURATE``.
Each supernova is injected from its discovery date on, at its catalogue position, with a light curve
(rise to peak over ``sn_rise_days``, then a linear decline in magnitude) and a colour by type.

Missions (``MISSIONS``): Swift/UVOT (1.0"/px, FWHM 2.5", UVW1/U/B, counts), GALEX (1.5"/px,
FWHM 5", NUV/FUV, count/s as the GALEX intensity maps), and Pan-STARRS1/GPC1 (0.25"/px, FWHM 1.1",
g/r/i, counts, only north of -30 deg), each observing only in its real years of operation. Visits
observe all chosen bands of a mission in turn.

Headers: a TAN WCS with a CD matrix (rotation included), ``EXPTIME``, ``FILTER``, ``TELESCOP``,
``INSTRUME``, ``MJD-OBS``, ``DATE-OBS``, ``BUNIT``, ``GAIN`` (electrons per data unit, so that the
Poisson variance of a pixel is ``data / GAIN``; for count/s images it includes the exposure time),
``RDNOISE`` (electrons), ``SATURATE`` (data units) and ``ZEROPT`` (magnitude of a source with a total
flux of one data unit).

Rejections for the pair stage are planted on purpose: visits in other bands and missions, several
visits on each side of the discovery, one-sided missions, ``poor_overlap_observations`` visits
pointed a third of a field away, ``outside_footprint_observations`` visits that miss the
supernova, and ``non_image_products`` spectra.

Reproducibility: the plan comes from a generator seeded by ``(seed, 0)``, the sky of each field and
mission by ``(seed, 1, field, mission)`` and the noise of image ``k`` by ``(seed, 2, k)``; gzip
headers carry no time stamp. The same seed and settings give the same files bit for bit.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.signal import fftconvolve

import astrodag.settings as checks
from astrodag import __version__
from astrodag.errors import ConfigError
from astrodag.io import atomic_path, write_json, write_table
from astrodag.settings import Settings, setting, subset, unknown_key
from astrodag.simulation.render import (
    add_cosmic_ray,
    add_moffat_source,
    moffat_alpha,
    moffat_psf,
    photon_and_read_noise,
    sersic_image,
    sky_plane,
)
from astrodag.supernova.archive.catalog import load_catalog
from astrodag.supernova.archive.pairing import tangent_plane

log = logging.getLogger(__name__)

TRUTH_COLUMNS = ("obsid", "sn_name", "mission", "filter", "mjd", "sn_ra", "sn_dec", "sn_injected", "sn_mag",
                 "sn_flux", "x", "y")
FORMATS = ("fits", "fits.gz", "fits.fz")
_DQ_SATURATED = 1
_STAR_COUNT_SLOPE = 0.2  # d log N / dm of field stars, as at high galactic latitude
_OBSID_BASE = 9_000_000_000  # far above MAST's own obsids, so a mix-up is visible


# --------------------------------------------------------------------------------------------
# missions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """One filter: zero point (mag of 1 count/s), sky (count/s/pixel), MAST wavelength range (nm), colours."""

    name: str
    zeropoint: float
    sky: float
    em_min: float
    em_max: float
    star_color: float  # mag per unit of a star's colour index (0 for the reference band)
    sn_color_ia: float  # offset of a type Ia supernova from its peak magnitude
    sn_color_cc: float  # the same for core-collapse types (bluer: young and hot)
    file_token: str  # band code in the file name


@dataclass(frozen=True)
class Mission:
    """An instrument as the archive sees it, with its detector, PSF and years of operation."""

    collection: str  # obs_collection
    instrument: str  # instrument_name
    telescope: str  # TELESCOP
    pixel_scale: float  # arcsec / pixel
    fwhm: float  # arcsec
    moffat_beta: float
    seeing_jitter: float  # fractional sigma of the FWHM from visit to visit
    bands: tuple[Band, ...]
    exptime: tuple[float, float]  # seconds
    gain: float  # electrons per count
    read_noise: float  # electrons
    saturate: float  # data units
    count_rate: bool  # images in count/s (BUNIT) rather than counts
    cosmic_rays: bool
    window: tuple[float, float]  # MJD of operation
    dec_min: float
    star_mags: tuple[float, float]  # field stars, in the first band

    def band(self, name: str) -> Band:
        return next(b for b in self.bands if b.name == name)


MISSIONS: dict[str, Mission] = {
    "SWIFT": Mission(
        "SWIFT", "UVOT", "SWIFT", 1.004, 2.5, 3.0, 0.03,
        (Band("B", 19.11, 0.020, 391.0, 489.0, 0.0, 0.0, 0.0, "bb"),
         Band("U", 18.34, 0.012, 308.0, 385.0, 0.8, 0.4, -0.3, "uu"),
         Band("UVW1", 17.44, 0.004, 226.0, 346.0, 1.8, 1.6, -0.4, "w1")),
        (200.0, 900.0), 1.0, 0.0, 20000.0, False, True, (53400.0, 61800.0), -90.0, (12.5, 19.5)),
    "GALEX": Mission(
        "GALEX", "GALEX", "GALEX", 1.5, 5.0, 2.5, 0.03,
        (Band("NUV", 20.08, 0.0015, 169.3, 300.7, 0.0, 2.0, -0.4, "nd"),
         Band("FUV", 18.82, 0.0002, 134.0, 180.6, 1.2, 3.5, 0.3, "fd")),
        (150.0, 1700.0), 1.0, 0.0, 40.0, True, False, (52700.0, 56440.0), -90.0, (13.5, 21.0)),
    "PS1": Mission(
        "PS1", "GPC1", "PS1", 0.25, 1.1, 3.5, 0.15,
        (Band("r", 24.68, 5.0, 538.6, 703.2, 0.0, 0.0, 0.1, "r"),
         Band("g", 24.41, 3.0, 394.3, 559.3, 0.6, 0.1, -0.1, "g"),
         Band("i", 24.56, 7.0, 678.0, 830.4, -0.3, 0.4, 0.2, "i")),
        (35.0, 60.0), 1.0, 5.5, 55000.0, False, True, (54950.0, 56750.0), -30.0, (15.0, 21.5)),
}

# The planted non-image product: a Swift/UVOT UV grism spectrum.
_GRISM = Band("UGRISM", 0.0, 0.0, 170.0, 650.0, 0.0, 0.0, 0.0, "gu")


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------

def _missions(key: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of distinct missions."""
    missions = subset(*MISSIONS)(key, value)
    if not missions:
        raise ConfigError(key, f"must be a non-empty list of {', '.join(MISSIONS)}, got {value!r}")
    return missions


def _image_size(key: str, value: Any) -> dict[str, int]:
    """Pixels per side: one number for every mission, or a mapping of some missions (the others keep the default)."""
    side = checks.number(32, 4096, integer=True)
    if not isinstance(value, Mapping):
        size = side(key, value)
        return {mission: size for mission in MISSIONS}
    for mission in value:
        if mission not in MISSIONS:
            raise ConfigError(f"{key}.{mission}", unknown_key(str(mission), tuple(MISSIONS)))
    return {**_DEFAULT_IMAGE_SIZE, **{mission: side(f"{key}.{mission}", size) for mission, size in value.items()}}


def _format_weights(key: str, value: Any) -> dict[str, float]:
    """Relative frequency of each file format (formats left out: 0); at least one above 0."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping of {', '.join(FORMATS)}, got {value!r}")
    for fmt in value:
        if fmt not in FORMATS:
            raise ConfigError(f"{key}.{fmt}", unknown_key(str(fmt), FORMATS))
    weights = {fmt: checks.number(0.0)(f"{key}.{fmt}", value[fmt]) if fmt in value else 0.0 for fmt in FORMATS}
    if sum(weights.values()) <= 0:
        raise ConfigError(key, "at least one format needs a weight > 0")
    return weights


_DEFAULT_IMAGE_SIZE = {"SWIFT": 256, "GALEX": 256, "PS1": 512}


@dataclass(frozen=True)
class SurveySettings(Settings):
    """What the synthetic survey holds (keys of ``supernova.survey``; defaults are the demo's).

    Ranges ``[low, high]`` are drawn uniformly (integers inclusive).

    Attributes
    ----------
    missions : list of str
        Missions to simulate, from ``SWIFT``, ``GALEX``, ``PS1``; the first that can observe a
        supernova on both sides of its discovery always does. Default all three.
    image_size : int or mapping
        Pixels per side of the images (32-4096): one number for every mission, or per mission
        (missions left out keep their default). Default ``{SWIFT: 256, GALEX: 256, PS1: 512}``: PS1's
        0.25" pixels need the larger image to hold enough isolated stars for a PSF.
    bands_per_mission : [int, int]
        Bands observed per supernova and mission (1-3). Default [1, 2].
    visits_before, visits_after : [int, int]
        Visits per supernova and mission before / after the discovery (fewer when the mission was
        not operating). Default [1, 2] each.
    reference_days_before : [float, float]
        Days before the discovery of a pre-discovery visit. Default [20, 2000].
    science_days_after : [float, float]
        Days after the discovery of a post-discovery visit. Default [2, 60].
    extra_mission_probability : float
        Chance that a further mission covering a supernova observes it too. Default 0.5 (GALEX
        and PS1 in several fields each, so that every real/bogus split can hold every mission).
    reference_probability : float
        Chance that a mission has pre-discovery visits of a supernova at all (many supernovae have
        no archival image from before). Default 0.8.
    sn_peak_mag : [float, float]
        Peak magnitude of a supernova (reference band, before colours). Default [14.0, 16.5].
    sn_rise_days : float
        Days from discovery (2.5 mag below peak) to peak. Default 15.0.
    sn_decline_mag_per_day : float
        Decline after the peak. Default 0.03.
    host_mag, host_reff_arcsec, host_sersic_n, host_offset_arcsec : [float, float]
        Host galaxy total magnitude (reference band), effective radius, Sersic index and offset of
        its centre from the supernova. Defaults [12.5, 15.0], [4, 15], [0.8, 4.0], [3, 12].
    stars_per_image : [int, int]
        Field stars per image area (between the mission's bright and faint limits). Default [50, 90].
    saturated_stars : int
        Stars near each supernova bright enough to saturate in every image. Default 1.
    cosmic_rays_per_image : [int, int]
        Cosmic-ray hits per image on CCD/UVOT missions. Default [3, 12].
    sky_gradient : float
        Largest relative change of the sky across an image. Default 0.05.
    pointing_offset_fraction : float
        Sigma of the pointing offset between visits, as a fraction of the field. Default 0.02.
    rotation_jitter_deg : float
        Sigma of the roll change between visits (degrees). Default 1.5.
    poor_overlap_observations : int
        Extra post-discovery visits pointed about a third of a field away. Default 2.
    outside_footprint_observations : int
        Extra pre-discovery visits whose footprint just misses the supernova. Default 1.
    non_image_products : int
        Extra non-image products (Swift/UVOT grism spectra). Default 1.
    format_weights : mapping
        Relative frequency of ``fits``, ``fits.gz`` and ``fits.fz`` files. Default 1 each.
    extension_fraction : float
        Share of ``.fits``/``.fits.gz`` images stored in an extension (``.fits.fz`` always are).
        Default 0.5.
    field_group_arcmin : float
        Supernovae closer than this share one simulated sky. Default 10.0.
    """

    PREFIX: ClassVar[str] = "supernova.survey"

    missions: tuple[str, ...] = setting(("SWIFT", "GALEX", "PS1"), _missions)
    image_size: dict[str, int] = setting(_DEFAULT_IMAGE_SIZE, _image_size)
    bands_per_mission: tuple[int, int] = setting((1, 2), checks.interval(1, 3, integer=True))
    visits_before: tuple[int, int] = setting((1, 2), checks.interval(0, 20, integer=True))
    visits_after: tuple[int, int] = setting((1, 2), checks.interval(0, 20, integer=True))
    reference_days_before: tuple[float, float] = setting((20.0, 2000.0), checks.interval(0.0, 20000.0))
    science_days_after: tuple[float, float] = setting((2.0, 60.0), checks.interval(0.0, 20000.0))
    extra_mission_probability: float = setting(0.5, checks.number(0.0, 1.0))
    reference_probability: float = setting(0.8, checks.number(0.0, 1.0))
    sn_peak_mag: tuple[float, float] = setting((14.0, 16.5), checks.interval(5.0, 30.0))
    sn_rise_days: float = setting(15.0, checks.number(0.5, 100.0))
    sn_decline_mag_per_day: float = setting(0.03, checks.number(0.0, 1.0))
    host_mag: tuple[float, float] = setting((12.5, 15.0), checks.interval(5.0, 30.0))
    host_reff_arcsec: tuple[float, float] = setting((4.0, 15.0), checks.interval(0.1, 600.0))
    host_sersic_n: tuple[float, float] = setting((0.8, 4.0), checks.interval(0.3, 8.0))
    host_offset_arcsec: tuple[float, float] = setting((3.0, 12.0), checks.interval(0.0, 600.0))
    stars_per_image: tuple[int, int] = setting((50, 90), checks.interval(0, 5000, integer=True))
    saturated_stars: int = setting(1, checks.number(0, 100, integer=True))
    cosmic_rays_per_image: tuple[int, int] = setting((3, 12), checks.interval(0, 5000, integer=True))
    sky_gradient: float = setting(0.05, checks.number(0.0, 0.5))
    pointing_offset_fraction: float = setting(0.02, checks.number(0.0, 0.2))
    rotation_jitter_deg: float = setting(1.5, checks.number(0.0, 45.0))
    poor_overlap_observations: int = setting(2, checks.number(0, 100, integer=True))
    outside_footprint_observations: int = setting(1, checks.number(0, 100, integer=True))
    non_image_products: int = setting(1, checks.number(0, 100, integer=True))
    format_weights: dict[str, float] = setting({"fits": 1.0, "fits.gz": 1.0, "fits.fz": 1.0}, _format_weights)
    extension_fraction: float = setting(0.5, checks.number(0.0, 1.0))
    field_group_arcmin: float = setting(10.0, checks.number(0.0, 600.0))

    def size(self, mission: str) -> int:
        """Pixels per side of the images of ``mission``."""
        return self.image_size[mission]


# --------------------------------------------------------------------------------------------
# sky scenes and the plan
# --------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """What is fixed on the sky for one field and mission: hosts, stars (ra, dec, mag per band)."""

    stars_ra: np.ndarray
    stars_dec: np.ndarray
    stars_mag: dict[str, np.ndarray]
    hosts: list[dict[str, Any]]


@dataclass
class Visit:
    """One pointing of one mission: time, pointing centre, roll, seeing; observes several bands."""

    sn_index: int
    mission: str
    bands: list[str]
    mjd: float
    ra: float
    dec: float
    roll_deg: float
    fwhm: float
    kind: str = "regular"  # or poor_overlap, outside_footprint, spectrum


def _field_groups(catalog: pd.DataFrame, radius_arcmin: float) -> list[list[int]]:
    """Indices of supernovae that share a field (single-linkage within ``radius_arcmin``), in catalogue order."""
    n = len(catalog)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            xi, eta = tangent_plane(catalog["ra"].iloc[j], catalog["dec"].iloc[j], catalog["ra"].iloc[i],
                                    catalog["dec"].iloc[i])
            if np.isfinite(xi) and math.hypot(float(xi), float(eta)) * 60.0 < radius_arcmin:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _offset(ra: float, dec: float, east_arcsec, north_arcsec):
    """The position(s) ``east``/``north`` arcsec from ``(ra, dec)`` on the tangent plane (inverse gnomonic)."""
    xi, eta = np.radians(np.asarray(east_arcsec) / 3600.0), np.radians(np.asarray(north_arcsec) / 3600.0)
    ra0, dec0 = math.radians(ra), math.radians(dec)
    denominator = math.cos(dec0) - eta * math.sin(dec0)
    ra_new = ra0 + np.arctan2(xi, denominator)
    dec_new = np.arctan2(math.sin(dec0) + eta * math.cos(dec0), np.hypot(xi, denominator))
    return np.degrees(ra_new) % 360.0, np.degrees(dec_new)


def _interval(mission: Mission, start: float, stop: float) -> tuple[float, float] | None:
    low, high = max(start, mission.window[0]), min(stop, mission.window[1])
    return (low, high) if high > low else None


def _draw_range(rng, bounds, integer=False):
    return int(rng.integers(bounds[0], bounds[1] + 1)) if integer else float(rng.uniform(*bounds))


def plan_visits(catalog: pd.DataFrame, settings: SurveySettings, rng: np.random.Generator) -> list[Visit]:
    """Every visit of the survey, planted rejections included (see the module docstring)."""
    visits: list[Visit] = []
    groups: list[tuple[int, str, list[int]]] = []  # (sn, mission, indices of its visits) per observed mission
    for index, sn in enumerate(catalog.itertuples(index=False)):
        primary_done = False
        for name in settings.missions:
            mission = MISSIONS[name]
            if sn.dec < mission.dec_min:
                continue
            before = _interval(mission, sn.discovery_mjd - settings.reference_days_before[1],
                               sn.discovery_mjd - settings.reference_days_before[0])
            after = _interval(mission, sn.discovery_mjd + settings.science_days_after[0],
                              sn.discovery_mjd + settings.science_days_after[1])
            # Many supernovae have no archival image from before: drawn for every mission, so that the
            # random stream does not branch.
            if rng.uniform() >= settings.reference_probability:
                before = None
            if before is None and after is None:
                continue
            two_sided = before is not None and after is not None
            chance = rng.uniform()  # drawn for every candidate mission, so the stream does not branch
            if not (two_sided and not primary_done) and chance >= settings.extra_mission_probability:
                continue
            primary_done |= two_sided
            n_bands = min(_draw_range(rng, settings.bands_per_mission, True), len(mission.bands))
            chosen = sorted(rng.choice(len(mission.bands), size=n_bands, replace=False))
            bands = [mission.bands[i].name for i in chosen]
            roll = rng.uniform(0.0, 360.0) if mission.collection != "PS1" else 0.0  # PS1 skycells are north up
            indices = []
            for interval, counts in ((before, settings.visits_before), (after, settings.visits_after)):
                if interval is None:
                    continue
                for mjd in np.sort(rng.uniform(*interval, size=_draw_range(rng, counts, True))):
                    indices.append(len(visits))
                    visits.append(_jittered_visit(index, sn, name, bands, float(mjd), roll, settings, rng))
            if indices:
                groups.append((index, name, indices))
    _plant_rejections(catalog, visits, groups, settings, rng)
    return visits


def _jittered_visit(index, sn, name, bands, mjd, roll, settings, rng, kind="regular", east=0.0, north=0.0):
    mission = MISSIONS[name]
    field_arcsec = settings.size(name) * mission.pixel_scale
    sigma = settings.pointing_offset_fraction * field_arcsec
    ra, dec = _offset(sn.ra, sn.dec, east + rng.normal(0.0, sigma), north + rng.normal(0.0, sigma))
    fwhm = mission.fwhm * math.exp(rng.normal(0.0, mission.seeing_jitter))
    return Visit(index, name, list(bands), mjd, ra, dec, roll + rng.normal(0.0, settings.rotation_jitter_deg),
                 fwhm, kind)


def _plant_rejections(catalog, visits, groups, settings, rng) -> None:
    """Add poor-overlap visits, visits that miss the supernova and non-image products to ``visits``."""
    def pick(candidates, count):
        if not candidates or not count:
            return []
        order = rng.permutation(len(candidates))[:count]
        return [candidates[i] for i in sorted(order)]

    with_science = [g for g in groups if any(visits[i].mjd > catalog["discovery_mjd"].iloc[g[0]] for i in g[2])]
    with_reference = [g for g in groups if any(visits[i].mjd < catalog["discovery_mjd"].iloc[g[0]] for i in g[2])]
    for index, name, members in pick(with_science, settings.poor_overlap_observations):
        sn = catalog.iloc[index]
        first = min(visits[i].mjd for i in members if visits[i].mjd > sn.discovery_mjd)
        mission = MISSIONS[name]
        # About a third of a field away: the supernova stays inside, the overlap drops to ~0.65.
        shift = 0.33 * settings.size(name) * mission.pixel_scale
        angle = rng.uniform(0.0, 2.0 * math.pi)
        template = visits[members[0]]
        visits.append(_jittered_visit(index, sn, name, template.bands[:1], 0.5 * (sn.discovery_mjd + first),
                                      template.roll_deg, settings, rng, "poor_overlap",
                                      shift * math.cos(angle), shift * math.sin(angle)))
    for index, name, members in pick(with_reference, settings.outside_footprint_observations):
        sn = catalog.iloc[index]
        last = max(visits[i].mjd for i in members if visits[i].mjd < sn.discovery_mjd)
        mission = MISSIONS[name]
        template = visits[members[0]]
        # Along the image x axis, whose direction on the sky (east, north) is (-cos roll, sin roll),
        # the centre half a field and then some away: the footprint's edge passes about 20" from the
        # supernova, well inside any query radius.
        shift = 0.5 * settings.size(name) * mission.pixel_scale * 1.05 + 20.0
        roll = math.radians(template.roll_deg)
        visits.append(_jittered_visit(index, sn, name, template.bands[:1], last - 1.0, template.roll_deg, settings,
                                      rng, "outside_footprint", -shift * math.cos(roll), shift * math.sin(roll)))
    swift_science = [g for g in with_science if g[1] == "SWIFT"] or with_science
    for index, name, members in pick(swift_science, settings.non_image_products):
        sn = catalog.iloc[index]
        template = visits[max(members, key=lambda i: visits[i].mjd)]
        visits.append(Visit(index, name, ["UGRISM"], template.mjd + 0.01, template.ra, template.dec,
                            template.roll_deg, template.fwhm, "spectrum"))


def make_scene(catalog: pd.DataFrame, members: list[int], mission: Mission, settings: SurveySettings,
               rng: np.random.Generator) -> Scene:
    """Stars and host galaxies of one field (the supernovae ``members``) as one mission sees them."""
    field_arcsec = settings.size(mission.collection) * mission.pixel_scale
    centre_ra, centre_dec = catalog["ra"].iloc[members[0]], catalog["dec"].iloc[members[0]]
    xi, eta = tangent_plane(catalog["ra"].iloc[members].to_numpy(), catalog["dec"].iloc[members].to_numpy(),
                            centre_ra, centre_dec)
    xi, eta = np.atleast_1d(xi) * 3600.0, np.atleast_1d(eta) * 3600.0
    # Stars cover every pointing of the field: the members' box widened by a field and a half
    # (pointing offsets, planted visits a field away).
    margin = 1.6 * field_arcsec
    box = (xi.min() - margin, xi.max() + margin, eta.min() - margin, eta.max() + margin)
    area_ratio = (box[1] - box[0]) * (box[3] - box[2]) / field_arcsec ** 2
    n_stars = int(round(_draw_range(rng, settings.stars_per_image, True) * area_ratio))
    east, north = rng.uniform(box[0], box[1], n_stars), rng.uniform(box[2], box[3], n_stars)
    bright, faint = mission.star_mags
    # dN/dm ~ 10^(k m): inverse transform of the cumulative 10^(k m).
    u = rng.uniform(size=n_stars)
    k = _STAR_COUNT_SLOPE
    base = np.log10(10 ** (k * bright) + u * (10 ** (k * faint) - 10 ** (k * bright))) / k
    color = rng.uniform(-0.2, 1.5, n_stars)
    mags = {band.name: base + color * band.star_color for band in mission.bands}

    # Saturating stars: a few fields of view from nothing, placed near each supernova (not on it).
    sat_east, sat_north, sat_mag = [], [], {band.name: [] for band in mission.bands}
    fwhm_px = mission.fwhm * (1 + 2 * mission.seeing_jitter) / mission.pixel_scale
    # Peak of a unit-flux Moffat: (beta - 1) / (pi alpha^2), in the worst seeing.
    peak = (mission.moffat_beta - 1.0) / (math.pi * moffat_alpha(fwhm_px, mission.moffat_beta) ** 2)
    for k in range(len(members)):
        for _ in range(settings.saturated_stars):
            radius = rng.uniform(0.12, 0.35) * field_arcsec
            angle = rng.uniform(0.0, 2.0 * math.pi)
            sat_east.append(xi[k] + radius * math.cos(angle))
            sat_north.append(eta[k] + radius * math.sin(angle))
            factor = rng.uniform(3.0, 10.0)
            for band in mission.bands:
                scale = 1.0 if mission.count_rate else mission.exptime[0]
                # Total flux (data units) whose PSF peak is `factor` x SATURATE in the shortest exposure.
                flux = factor * mission.saturate / (peak * scale)
                sat_mag[band.name].append(band.zeropoint - 2.5 * math.log10(flux))
    east = np.concatenate([east, sat_east])
    north = np.concatenate([north, sat_north])
    mags = {name: np.concatenate([mags[name], sat_mag[name]]) for name in mags}
    ra, dec = _offset(centre_ra, centre_dec, east, north)

    hosts = []
    for index in members:
        offset = _draw_range(rng, settings.host_offset_arcsec)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        host_ra, host_dec = _offset(catalog["ra"].iloc[index], catalog["dec"].iloc[index],
                                    offset * math.cos(angle), offset * math.sin(angle))
        hosts.append({"ra": host_ra, "dec": host_dec, "mag": _draw_range(rng, settings.host_mag),
                      "r_eff": _draw_range(rng, settings.host_reff_arcsec),
                      "n": _draw_range(rng, settings.host_sersic_n), "axis_ratio": rng.uniform(0.35, 1.0),
                      "pa": rng.uniform(0.0, math.pi), "color": rng.uniform(0.4, 1.2)})
    return Scene(np.atleast_1d(ra), np.atleast_1d(dec), mags, hosts)


def sn_magnitude(sn, band: Band, mjd: float, peak_mag: float, settings: SurveySettings) -> float:
    """The supernova's magnitude in ``band`` at ``mjd`` (NaN before discovery)."""
    days = mjd - float(sn["discovery_mjd"])
    if days <= 0:
        return float("nan")
    if days < settings.sn_rise_days:
        light = 2.5 * (1.0 - days / settings.sn_rise_days) ** 2
    else:
        light = settings.sn_decline_mag_per_day * (days - settings.sn_rise_days)
    color = band.sn_color_ia if str(sn["type"]).startswith("Ia") else band.sn_color_cc
    return peak_mag + color + light


# --------------------------------------------------------------------------------------------
# images and files
# --------------------------------------------------------------------------------------------


def image_header(mission: Mission, band: Band, visit: Visit, exptime: float, size: int, obsid: str,
                 target: str, seed: int) -> dict[str, Any]:
    """The FITS keywords of an image, with a TAN WCS whose CD matrix holds the pixel scale and roll."""
    from astropy.time import Time

    scale = mission.pixel_scale / 3600.0
    roll = math.radians(visit.roll_deg)
    rate = exptime if mission.count_rate else 1.0
    zeropoint = band.zeropoint if mission.count_rate else band.zeropoint + 2.5 * math.log10(exptime)
    return {
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": visit.ra, "CRVAL2": visit.dec, "CRPIX1": (size + 1) / 2.0, "CRPIX2": (size + 1) / 2.0,
        # East is left at zero roll; the roll turns the axes counter-clockwise on the sky.
        "CD1_1": -scale * math.cos(roll), "CD1_2": scale * math.sin(roll),
        "CD2_1": scale * math.sin(roll), "CD2_2": scale * math.cos(roll),
        "RADESYS": "ICRS", "EQUINOX": 2000.0,
        "TELESCOP": mission.telescope, "INSTRUME": mission.instrument, "FILTER": band.name,
        "OBJECT": target, "OBSID": obsid,
        "EXPTIME": exptime, "MJD-OBS": visit.mjd, "DATE-OBS": Time(visit.mjd, format="mjd").isot,
        "BUNIT": "count/s" if mission.count_rate else "count",
        "GAIN": mission.gain * rate, "RDNOISE": mission.read_noise, "SATURATE": mission.saturate,
        "ZEROPT": zeropoint, "PIXSCALE": mission.pixel_scale,
        "ORIGIN": "astrodag synthetic survey", "ASTRODAG": __version__, "SIMSEED": seed,
    }


def render_image(scene: Scene, sources: list[tuple[float, float, float]], header: dict[str, Any], mission: Mission,
                 band: Band, visit: Visit, settings: SurveySettings, rng: np.random.Generator) -> tuple:
    """The noisy image and its DQ plane.

    ``sources`` are the supernovae as ``(x, y, flux)`` (0-based pixels, data units).
    """
    from astropy.wcs import WCS

    size = settings.size(mission.collection)
    wcs = WCS(header)
    exptime = header["EXPTIME"]
    to_data = 1.0 if mission.count_rate else exptime  # count/s -> data units
    fwhm_px = visit.fwhm / mission.pixel_scale
    beta = mission.moffat_beta

    hosts = np.zeros((size, size))
    for host in scene.hosts:
        x0, y0 = wcs.all_world2pix(host["ra"], host["dec"], 0)
        # Roll of the host's major axis in pixel coordinates: sky position angle minus the roll.
        angle = host["pa"] - math.radians(visit.roll_deg)
        flux = 10 ** (-0.4 * (host["mag"] + host["color"] * band.star_color - band.zeropoint)) * to_data
        hosts += sersic_image((size, size), float(x0), float(y0), flux, host["r_eff"] / mission.pixel_scale,
                              host["n"], host["axis_ratio"], angle)
    image = fftconvolve(hosts, moffat_psf(fwhm_px, beta), mode="same")

    gain = header["GAIN"]  # electrons per data unit
    sky = band.sky * to_data
    # A tenth of the sky noise: PSF wings below it are invisible.
    floor = 0.1 * math.sqrt(sky * gain + mission.read_noise ** 2) / gain
    xs, ys = wcs.all_world2pix(scene.stars_ra, scene.stars_dec, 0)
    pad = 0.5 * size
    inside = (xs > -pad) & (xs < size + pad) & (ys > -pad) & (ys < size + pad)
    fluxes = 10 ** (-0.4 * (scene.stars_mag[band.name] - band.zeropoint)) * to_data
    for x, y, flux in zip(xs[inside], ys[inside], fluxes[inside], strict=True):
        add_moffat_source(image, float(x), float(y), float(flux), fwhm_px, beta, floor)
    for x, y, flux in sources:
        add_moffat_source(image, x, y, flux, fwhm_px, beta, floor)

    gx, gy = rng.uniform(-settings.sky_gradient, settings.sky_gradient, 2)
    image += sky_plane((size, size), sky, gx, gy)

    image = photon_and_read_noise(image, gain, mission.read_noise, rng)
    if mission.cosmic_rays:
        for _ in range(_draw_range(rng, settings.cosmic_rays_per_image, True)):
            add_cosmic_ray(image, rng, mission.gain, exptime if mission.count_rate else 1.0)
    saturated = image >= mission.saturate
    image = np.minimum(image, mission.saturate).astype(np.float32)
    return image, np.where(saturated, _DQ_SATURATED, 0).astype(np.uint8)


def fits_bytes(image: np.ndarray | None, dq: np.ndarray | None, header: Mapping[str, Any], fmt: str,
               extension: bool, dither_seed: int, table=None) -> bytes:
    """The file's bytes in format ``fmt`` (``fits``, ``fits.gz``, ``fits.fz``), without time stamps."""
    from astropy.io import fits

    cards = fits.Header()
    for key, value in header.items():
        cards[key] = value
    if table is not None:
        hdus = [fits.PrimaryHDU(header=cards), fits.BinTableHDU(table, name="SPECTRUM")]
    elif fmt == "fits.fz":
        # fpack's layout: an empty primary, the image tile-compressed in an extension.
        hdus = [fits.PrimaryHDU(),
                fits.CompImageHDU(image, cards, name="SCI", compression_type="RICE_1", quantize_level=16.0,
                                  quantize_method=1, dither_seed=dither_seed),
                fits.CompImageHDU(dq, name="DQ", compression_type="RICE_1")]
    elif extension:
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(image, cards, name="SCI"), fits.ImageHDU(dq, name="DQ")]
    else:
        hdus = [fits.PrimaryHDU(image, cards), fits.ImageHDU(dq, name="DQ")]
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    data = buffer.getvalue()
    return gzip.compress(data, compresslevel=6, mtime=0) if fmt == "fits.gz" else data


def _footprint_region(header: Mapping[str, Any], size: int) -> str:
    from astropy.wcs import WCS

    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])
    ra, dec = WCS(dict(header)).all_pix2world(corners[:, 0], corners[:, 1], 0)
    return "POLYGON " + " ".join(f"{r % 360.0:.7f} {d:.7f}" for r, d in zip(ra, dec, strict=True))


def _file_name(mission: Mission, band_token: str, obs_id: str, fmt: str) -> str:
    """Archive-like file names: GALEX intensity maps, PS1 warps, Swift/UVOT sky images."""
    if mission.collection == "GALEX":
        stem = f"{obs_id}-{band_token}-int"
    elif mission.collection == "PS1":
        stem = f"{obs_id}.wrp.{band_token}"
    else:
        stem = f"sw{obs_id}{band_token}_sk"
    return f"{stem}.{fmt}"


def generate_survey(catalog_path: str | Path, out_dir: str | Path, settings: SurveySettings, seed: int,
                    progress: bool | None = None) -> dict[str, Any]:
    """Simulate the survey and write it as a local archive (see the module docstring).

    Parameters
    ----------
    catalog_path : str or Path
        The supernova catalogue.
    out_dir : str or Path
        Gets ``observations.csv``, ``files/``, ``truth.csv`` and ``summary.json``.
    settings : SurveySettings
    seed : int
        Seed of everything random.
    progress : bool, optional
        Show a progress bar (default: only on a terminal).

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    from astropy.wcs import WCS
    from tqdm.auto import tqdm

    from astrodag.logs import progress_enabled

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
    started = time.perf_counter()
    catalog = load_catalog(catalog_path)
    out_dir = Path(out_dir)
    files_dir = out_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    visits = plan_visits(catalog, settings, np.random.default_rng((seed, 0)))
    groups = _field_groups(catalog, settings.field_group_arcmin)
    group_of = {index: g for g, members in enumerate(groups) for index in members}
    peak_mag = np.random.default_rng((seed, 3)).uniform(*settings.sn_peak_mag, len(catalog))
    scenes: dict[tuple[int, str], Scene] = {}
    format_names = list(FORMATS)
    weights = np.array([settings.format_weights[f] for f in format_names])
    file_rng = np.random.default_rng((seed, 4))

    rows, truth, written = [], [], set()
    exposures = [(visit, band) for visit in visits for band in visit.bands]
    bar = tqdm(total=len(exposures), desc="survey images", unit="image", disable=not progress_enabled(progress))
    for number, (visit, band_name) in enumerate(exposures):
        sn = catalog.iloc[visit.sn_index]
        mission = MISSIONS[visit.mission]
        size = settings.size(visit.mission)
        obsid = str(_OBSID_BASE + number + 1)
        obs_id = f"{visit.sn_index + 1:03d}{number + 1:05d}"
        target = sn["host"] or sn["safe_name"]
        rng = np.random.default_rng((seed, 2, number))
        start = visit.mjd + visit.bands.index(band_name) * 0.01  # the bands of a visit one after the other
        exptime = round(float(rng.uniform(*mission.exptime)), 1)
        visit_band = replace(visit, mjd=start)
        if visit.kind == "spectrum":
            band = _GRISM
            header = image_header(mission, mission.bands[0], visit_band, exptime, size, obsid,
                                  target, seed)
            header["FILTER"] = "UGRISM"
            wavelength = np.linspace(170.0, 650.0, 200)
            table = np.rec.fromarrays([wavelength, rng.normal(1.0, 0.05, wavelength.size)], names="WAVE,FLUX")
            name, data = f"sw{obs_id}ugu_dt.fits", fits_bytes(None, None, header, "fits", False, 1, table=table)
            product_type = "spectrum"
        else:
            band = mission.band(band_name)
            header = image_header(mission, band, visit_band, exptime, size, obsid, target, seed)
            key = (group_of[visit.sn_index], visit.mission)
            if key not in scenes:
                scenes[key] = make_scene(catalog, groups[key[0]], mission, settings,
                                         np.random.default_rng((seed, 1, key[0], settings.missions.index(key[1]))))
            wcs = WCS(header)
            sources, image_truth = [], []
            for member in groups[group_of[visit.sn_index]]:
                other = catalog.iloc[member]
                x, y = (float(v) for v in wcs.all_world2pix(other["ra"], other["dec"], 0))
                if not (-0.5 <= x < size - 0.5 and -0.5 <= y < size - 0.5):
                    continue
                mag = sn_magnitude(other, band, start + exptime / 172800.0, peak_mag[member], settings)
                to_data = 1.0 if mission.count_rate else exptime
                flux = 10 ** (-0.4 * (mag - band.zeropoint)) * to_data if np.isfinite(mag) else 0.0
                if flux > 0:
                    sources.append((x, y, flux))
                image_truth.append({"obsid": obsid, "sn_name": other["sn_name"], "mission": mission.collection,
                                    "filter": band.name, "mjd": start + exptime / 172800.0, "sn_ra": other["ra"],
                                    "sn_dec": other["dec"], "sn_injected": flux > 0, "sn_mag": mag,
                                    "sn_flux": flux, "x": x, "y": y})
            image, dq = render_image(scenes[key], sources, header, mission, band, visit_band, settings, rng)
            fmt = format_names[int(file_rng.choice(len(format_names), p=weights / weights.sum()))]
            extension = fmt == "fits.fz" or bool(file_rng.uniform() < settings.extension_fraction)
            name = _file_name(mission, band.file_token, obs_id, fmt)
            data = fits_bytes(image, dq, header, fmt, extension, dither_seed=1 + number % 10000)
            truth += image_truth
            product_type = "image"
        with atomic_path(files_dir / name) as tmp:
            tmp.write_bytes(data)
        written.add(name)
        rows.append({
            "obsid": obsid, "obs_id": obs_id, "obs_collection": mission.collection,
            "instrument_name": mission.instrument, "filters": band.name, "target_name": target,
            "dataproduct_type": product_type, "calib_level": 2, "t_min": start,
            "t_max": start + exptime / 86400.0, "t_exptime": exptime, "s_ra": visit.ra, "s_dec": visit.dec,
            "s_region": _footprint_region(header, size), "dataURL": f"files/{name}",
            "em_min": band.em_min, "em_max": band.em_max, "size": len(data),
            "checksum": hashlib.sha256(data).hexdigest(),
        })
        bar.update()
    bar.close()
    for stale in files_dir.iterdir():  # products of an earlier run into the same folder
        if stale.is_file() and stale.name not in written:
            stale.unlink()

    from astrodag.supernova.archive.backends import QUERY_COLUMNS

    observations = pd.DataFrame(rows, columns=list(QUERY_COLUMNS))
    write_table(out_dir / "observations.csv", observations)
    write_table(out_dir / "truth.csv", pd.DataFrame(truth, columns=list(TRUTH_COLUMNS)))
    images = observations[observations["dataproduct_type"] == "image"]
    suffix = images["dataURL"].str.extract(r"\.(fits(?:\.gz|\.fz)?)$")[0]
    summary = {
        "seed": int(seed),
        "supernovae": len(catalog),
        "supernovae_observed": len({visit.sn_index for visit in visits}),
        "images": len(images),
        "non_image_products": int((observations["dataproduct_type"] != "image").sum()),
        "images_by_mission": images.groupby("obs_collection").size().to_dict(),
        "images_by_filter": {f"{mission}/{band}": int(count) for (mission, band), count in
                             images.groupby(["obs_collection", "filters"]).size().items()},
        "files_by_format": suffix.value_counts().sort_index().to_dict(),
        "planted": {kind: sum(v.kind == kind for v in visits)
                    for kind in ("poor_overlap", "outside_footprint", "spectrum")},
        "sn_injected_images": int(sum(row["sn_injected"] for row in truth)),
        "bytes": int(observations["size"].sum()),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "settings": settings.as_dict(),
        "astrodag_version": __version__,
    }
    write_json(out_dir / "summary.json", summary)
    log.info("survey: %d images of %d supernovae in %.1f s", summary["images"], summary["supernovae_observed"],
             summary["elapsed_s"])
    return summary

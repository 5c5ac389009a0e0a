"""Small organic molecules as 3-D point clouds: atom positions, atom types and a padding mask.

Source: the molecules that ship inside RDKit's wheel, in RDKit's data folder: NCI/first_5K.smi
(the first 5,000 structures of the NCI open database) and Pains/test_data/wehi_mols.csv (10,000
screening compounds of WEHI). Each is reduced to its largest fragment and kept if it is neutral,
made of H, C, N, O and F only, and has 2 to `max_heavy_atoms` heavy atoms (QM9's limit is 9; only
420 bundled molecules pass it, so the default is 12: 1,056 molecules before conformer failures).
Molecules are named by canonical SMILES without stereo, and deduplicated by that name.

Conformers: hydrogens made explicit, one ETKDG (v3) embedding with a fixed random seed, then an
MMFF94 optimisation, made once and cached as an .npz (arrays only) under CACHE/molecules, where
CACHE is `cache_dir` if given, else $DIFFUSE_CACHE, else ~/.cache/diffuse. The file's name covers
everything a conformer depends on (the recipe's version, the size limit, the seed and RDKit's
version). A molecule RDKit cannot embed or has no MMFF parameters for is left out (counted in
`Conformers.failed`).

Split: by molecule, fixed: a molecule is in "test" when the SHA-256 of its canonical SMILES, read as
a fraction of 2**64 from its first 8 bytes, is below HOLDOUT_FRACTION (10%). It depends on the
molecule alone, so a molecule never moves between splits when the source or the size limit changes.

Examples: "x" float32 [N_max, 3], positions in Angstrom, centred so that the real atoms' mean is
zero (the centre of mass in EDM's sense: every atom weighted alike, the subspace a zero-centre-of-
mass Gaussian path lives in); "atom_types" float32 [N_max, 5], one-hot over ELEMENTS (H, C, N, O,
F), unscaled (a task scales it against the positions as it likes); "mask" bool [N_max], True at
real atoms. Padding rows are zero in all three. N_max is the largest atom count (hydrogens
included) over both splits, so the splits share one shape. The modality is "points".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import cache_folder, cached_arrays
from .dataset import TensorDataset, WithColumns
from .splits import HOLDOUT_FRACTION, check_split

ELEMENTS = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS = (1, 6, 7, 8, 9)
# Bump when the source, the filter or the conformer recipe changes what a cached file holds.
CONFORMER_VERSION = 1
DEFAULT_MAX_HEAVY_ATOMS = 12
DEFAULT_SEED = 0
# Files in RDKit's data folder (RDConfig.RDDataDir) that the molecules come from.
SOURCES = ("NCI/first_5K.smi", "Pains/test_data/wehi_mols.csv")


def need_rdkit():
    """RDKit's Chem module, or an ImportError that says how to install it."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:
        raise ImportError("molecules need RDKit: pip install 'diffuse-paths[molecules]' (or pip install rdkit)") from e
    RDLogger.DisableLog("rdApp.*")  # its per-molecule parse warnings would flood a build's output
    return Chem


def default_cache_dir() -> Path:
    return cache_folder("molecules")


def _source_lines():
    """(file, first field) of every line of the bundled source files: the SMILES column."""
    from rdkit import RDConfig
    for name in SOURCES:
        path = Path(RDConfig.RDDataDir) / name
        if not path.is_file():
            raise FileNotFoundError(f"RDKit's bundled molecules are missing: {path} (a different RDKit build?)")
        for line in path.read_text().splitlines():
            field = re.split(r"[\s,]", line.strip(), maxsplit=1)[0].strip('"')
            if field:
                yield name, field


def qm9_like_smiles(mol, max_heavy_atoms: int) -> str | None:
    """The canonical SMILES (no stereo) of a molecule's largest fragment if it is neutral, made of
    ELEMENTS and has 2 to max_heavy_atoms heavy atoms; None otherwise."""
    Chem = need_rdkit()
    if mol is None:
        return None
    largest = max(Chem.GetMolFrags(mol, asMols=True), key=lambda m: m.GetNumHeavyAtoms())
    if not 2 <= largest.GetNumHeavyAtoms() <= max_heavy_atoms:
        return None
    if any(a.GetAtomicNum() not in ATOMIC_NUMBERS or a.GetFormalCharge() or a.GetNumRadicalElectrons()
           or a.GetIsotope() for a in largest.GetAtoms()):
        return None
    return Chem.MolToSmiles(largest, isomericSmiles=False)


def source_smiles(max_heavy_atoms: int = DEFAULT_MAX_HEAVY_ATOMS) -> list[str]:
    """The bundled molecules that pass the filter (see the module docstring), sorted, deduplicated."""
    Chem = need_rdkit()
    kept = {qm9_like_smiles(Chem.MolFromSmiles(smiles), max_heavy_atoms) for _, smiles in _source_lines()}
    return sorted(kept - {None})


def conformer(smiles: str, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray] | None:
    """(atomic numbers int64 [n], positions float64 [n, 3] in Angstrom) of one ETKDG + MMFF94
    conformer with explicit hydrogens, or None when RDKit cannot embed or parameterise it."""
    Chem = need_rdkit()
    from rdkit.Chem import AllChem
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0 or not AllChem.MMFFHasAllMoleculeParams(mol):
        return None
    AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    return numbers, mol.GetConformer().GetPositions().astype(np.float64)


@dataclass(frozen=True)
class Conformers:
    """Every molecule's conformer, ragged: molecule k's atoms are rows offsets[k]:offsets[k+1]."""

    smiles: np.ndarray          # unicode [M]
    counts: np.ndarray          # int64 [M], atoms per molecule, hydrogens included
    numbers: np.ndarray         # int64 [sum counts], atomic numbers
    positions: np.ndarray       # float64 [sum counts, 3], Angstrom
    failed: np.ndarray          # unicode [F], molecules RDKit could not embed or parameterise

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)])

    def molecule(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.numbers[a:b], self.positions[a:b]


def make_conformers(smiles_list, seed: int = DEFAULT_SEED) -> Conformers:
    kept, failed, numbers, positions = [], [], [], []
    for smiles in smiles_list:
        made = conformer(smiles, seed)
        if made is None:
            failed.append(smiles)
            continue
        kept.append(smiles)
        numbers.append(made[0])
        positions.append(made[1])
    return Conformers(np.array(kept, dtype=str), np.array([len(n) for n in numbers], dtype=np.int64),
                      np.concatenate(numbers) if numbers else np.zeros(0, np.int64),
                      np.concatenate(positions) if positions else np.zeros((0, 3)), np.array(failed, dtype=str))


def cache_path(max_heavy_atoms: int, seed: int, cache_dir=None) -> Path:
    import rdkit
    key = f"molecules-v{CONFORMER_VERSION}-heavy{max_heavy_atoms}-seed{seed}-rdkit{rdkit.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"conformers-heavy{max_heavy_atoms}-seed{seed}-{digest}.npz"


def cached_conformers(max_heavy_atoms: int = DEFAULT_MAX_HEAVY_ATOMS, seed: int = DEFAULT_SEED,
                      cache_dir=None) -> Conformers:
    """The conformers of every bundled molecule that passes the filter, from the cache or made into it."""
    if isinstance(max_heavy_atoms, bool) or not isinstance(max_heavy_atoms, int) or max_heavy_atoms < 2:
        raise ValueError(f"max_heavy_atoms must be an integer of at least 2, got {max_heavy_atoms!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    need_rdkit()
    return cached_arrays(cache_path(max_heavy_atoms, seed, cache_dir), Conformers,
                         lambda: make_conformers(source_smiles(max_heavy_atoms), seed))


def in_test_split(smiles: str) -> bool:
    """Whether a molecule is held out: a hash of its canonical SMILES, so the split is fixed by molecule."""
    fraction = int.from_bytes(hashlib.sha256(smiles.encode()).digest()[:8], "big") / 2**64
    return fraction < HOLDOUT_FRACTION


def point_clouds(conformers: Conformers, n_max: int | None = None) -> dict[str, torch.Tensor]:
    """The padded examples of every molecule (see the module docstring): x, atom_types, mask."""
    n_max = int(conformers.counts.max()) if n_max is None else n_max
    if len(conformers.counts) and conformers.counts.max() > n_max:
        raise ValueError(f"a molecule has {conformers.counts.max()} atoms, more than n_max={n_max}")
    m = len(conformers.counts)
    x = np.zeros((m, n_max, 3), np.float32)
    types = np.zeros((m, n_max, len(ELEMENTS)), np.float32)
    mask = np.zeros((m, n_max), bool)
    index = {z: i for i, z in enumerate(ATOMIC_NUMBERS)}
    for k in range(m):
        numbers, positions = conformers.molecule(k)
        n = len(numbers)
        x[k, :n] = positions - positions.mean(0)
        types[k, np.arange(n), [index[int(z)] for z in numbers]] = 1
        mask[k, :n] = True
    return {"x": torch.from_numpy(x), "atom_types": torch.from_numpy(types), "mask": torch.from_numpy(mask)}


class Molecules(WithColumns):
    """A split of the molecules: examples {"x", "atom_types", "mask"} and each one's `smiles`."""

    def __init__(self, base: TensorDataset, smiles: list[str], **columns: torch.Tensor):
        super().__init__(base, **columns)
        if len(smiles) != len(base):
            raise ValueError(f"{base.name}: {len(base)} molecules but {len(smiles)} SMILES")
        self.smiles = list(smiles)

    def subset(self, index, name: str) -> "Molecules":
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return Molecules(self.base.subset(index, name), [self.smiles[i] for i in index.tolist()],
                         **{k: v[index] for k, v in self.columns.items()})


def load_molecules(split: str = "train", max_heavy_atoms: int = DEFAULT_MAX_HEAVY_ATOMS, seed: int = DEFAULT_SEED,
                   cache_dir: str | None = None) -> Molecules:
    """One split of the molecules (see the module docstring)."""
    check_split(split)
    conformers = cached_conformers(max_heavy_atoms, seed, cache_dir)
    clouds = point_clouds(conformers)
    chosen = np.array([in_test_split(s) == (split == "test") for s in conformers.smiles.tolist()], dtype=bool)
    if not chosen.any():
        raise ValueError(f"the {split} split of the molecules with at most {max_heavy_atoms} heavy atoms is empty")
    index = torch.from_numpy(np.flatnonzero(chosen))
    base = TensorDataset(clouds["x"][index], name=f"molecules-{split}", modality="points")
    return Molecules(base, conformers.smiles[chosen].tolist(), atom_types=clouds["atom_types"][index],
                     mask=clouds["mask"][index])

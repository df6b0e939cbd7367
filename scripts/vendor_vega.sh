#!/usr/bin/env bash
# Rebuilds vendor/dvc_plots.html: DVC's plots page with Vega, Vega-Lite and vega-embed inlined, so
# `dvc plots show` (which .dvc/config points at this template) renders with no network. The versions
# are the ones dvc-render's Vega renderer loads from a CDN; their licences (BSD-3-Clause) are kept
# beside the template. Needs npm (the registry) once; the project ships the result.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
packages=(vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2)
for spec in "${packages[@]}"; do
  (cd "$work" && npm pack -q "$spec" >/dev/null)
done
{
  printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>DVC plots (offline)</title>\n'
  for spec in "${packages[@]}"; do
    name=${spec%@*}
    tgz=$(ls "$work/$name"-[0-9]*.tgz)
    printf '<!-- %s, from its npm package -->\n<script>\n' "$spec"
    tar xzf "$tgz" -O "package/build/$name.min.js" | sed 's|</script>|<\\/script>|g'
    printf '\n</script>\n'
    tar xzf "$tgz" -O package/LICENSE > "vendor/LICENSE-$name"
  done
  printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} > vendor/dvc_plots.html
echo "vendor/dvc_plots.html: $(wc -c < vendor/dvc_plots.html) bytes"

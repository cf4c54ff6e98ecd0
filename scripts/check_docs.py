#!/usr/bin/env python3
"""Every relative link in README.md and docs/*.md resolves: to a file of the repository,
and, with `#anchor`, to a heading of it (GitHub's anchor rule: lower case, spaces to
dashes, punctuation dropped); the README stays at most 300 lines. Exits 1 naming each
broken link."""
import os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 300


def anchors(path):
    out = set()
    for line in open(path, encoding="utf-8"):
        m = re.match(r"#+ (.*)", line)
        if m:
            a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(a)
    return out


def main():
    docs = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                            if f.endswith(".md")]
    broken = []
    for doc in docs:
        text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
            if not os.path.exists(full):
                broken.append(f"{doc}: {target} (no such file)")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                broken.append(f"{doc}: {target} (no such heading)")
    readme_lines = sum(1 for _ in open(os.path.join(ROOT, "README.md"), encoding="utf-8"))
    if readme_lines > README_MAX_LINES:
        broken.append(f"README.md: {readme_lines} lines (at most {README_MAX_LINES}: the rest belongs in docs/)")
    for b in broken:
        print(b)
    print(f"docs links: {len(docs)} files, {len(broken)} broken")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()

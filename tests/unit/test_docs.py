"""Every file the READMEs and docs link to is in the repository (tracked by git, not just present on this disk)."""
import glob
import os
import pytest
import re
import shutil
import subprocess
from conftest import REPO_ROOT

DOCS = ['README.md', 'SECURITY.md', 'benchmarks/README.md'] + sorted(
    os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, 'docs', '*.md')))
LINK = re.compile(r'\]\(([^)#\s]+)(?:#[^)]*)?\)')


def _links(doc):
    with open(os.path.join(REPO_ROOT, doc), encoding='utf-8') as f:
        text = f.read()
    for target in LINK.findall(text):
        if '://' in target or target.startswith('mailto:'):
            continue
        yield os.path.normpath(os.path.join(os.path.dirname(doc), target))


def _tracked():
    if shutil.which('git') is None or not os.path.isdir(os.path.join(REPO_ROOT, '.git')) and not os.path.isfile(
            os.path.join(REPO_ROOT, '.git')):
        return None
    proc = subprocess.run(['git', 'ls-files'], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    files = set(proc.stdout.split())
    return files | {os.path.dirname(f) for f in files}


@pytest.mark.parametrize('doc', DOCS)
def test_every_linked_file_is_in_the_repository(doc):
    tracked = _tracked()
    links = list(_links(doc))
    assert doc != 'README.md' or len(links) >= 5  # the parser finds the README's links
    for target in links:
        assert os.path.exists(os.path.join(REPO_ROOT, target)), f'{doc} links to {target}, which does not exist'
        if tracked is not None:
            assert target in tracked, f'{doc} links to {target}, which git does not track (ignored?)'

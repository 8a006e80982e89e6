# Debian packages: pop-agent, pop-agent-upload and pop-agent-commercial (packaging/debian/).
# Included by the main Makefile; usable alone with `make -f mk/deb.mk deb`.
#
#   make deb [DEB_VERSION=x.y.z]   -> dist/deb/*.deb   (DEB_DIST=, DEB_BUILD= move them)
#   make deb-lint                  -> lintian on dist/deb/*.deb: fails on any error
#
# The build runs in a copy of the checkout (DEB_BUILD/src), so the tree is never touched:
# DEB_VERSION, when given, is written into the copy's agent/version.py. Third-party wheels
# come from a wheelhouse, filled once from PyPI and reused (DEB_WHEELHOUSE): the package
# build itself never reaches the network.

DEB_DIST ?= dist/deb
DEB_BUILD ?= build/deb
DEB_WHEELHOUSE ?= $(HOME)/.cache/pop-agent/deb-wheelhouse
# Debian's interpreter: the packaged environments run on it, so they are built with it.
DEB_PYTHON ?= /usr/bin/python3
TREE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' agent/version.py)
DEB_VERSION ?= $(TREE_VERSION)

DEB_SRC = $(DEB_BUILD)/src
DEB_TOOLS_NEEDED := dpkg-buildpackage dh help2man

.PHONY: deb deb-lint deb-check-tools deb-source deb-wheelhouse

deb-check-tools:
	@missing=""; for tool in $(DEB_TOOLS_NEEDED); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then echo "make deb: missing$$missing (Debian: apt-get install debhelper dpkg-dev help2man)" >&2; exit 1; fi
	@echo "$(DEB_VERSION)" | grep -Eqx '[0-9]+(\.[0-9]+)*' \
	  || { echo "make deb: DEB_VERSION must be dotted numbers, such as 0.1.1 (got '$(DEB_VERSION)')" >&2; exit 2; }

# The checkout as git sees it (tracked and untracked files, nothing ignored), or all of it
# without build products when it is no git checkout.
deb-source: deb-check-tools
	rm -rf "$(DEB_SRC)"
	mkdir -p "$(DEB_SRC)"
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -C "$(DEB_SRC)" -xf -; \
	else \
	  tar --exclude=./.venv --exclude=./dist --exclude=./build --exclude=./.pop-agent --exclude='__pycache__' \
	    --exclude='*.so' -cf - . | tar -C "$(DEB_SRC)" -xf -; \
	fi
	cp -a packaging/debian "$(DEB_SRC)/debian"
	sed -i 's/^__version__ = .*/__version__ = "$(DEB_VERSION)"/' "$(DEB_SRC)/agent/version.py"
	epoch=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || date +%s)}; \
	printf '%s\n' \
	  "pop-agent ($(DEB_VERSION)) unstable; urgency=medium" "" \
	  "  * Built from the pop-agent tree; its history is the project's git log." "" \
	  " -- pop-agent maintainers <pop-agent@example.com>  $$(LC_ALL=C date -u -R -d @$$epoch)" \
	  > "$(DEB_SRC)/debian/changelog"

deb-wheelhouse: deb-source
	mk/deb-wheelhouse $(DEB_PYTHON) "$(DEB_SRC)" "$(DEB_WHEELHOUSE)" "$(DEB_BUILD)"

deb: deb-wheelhouse
	cd "$(DEB_SRC)" && POP_AGENT_WHEELHOUSE="$(abspath $(DEB_WHEELHOUSE))" dpkg-buildpackage --build=binary --no-sign
	mkdir -p "$(DEB_DIST)"
	rm -f "$(DEB_DIST)"/*.deb
	mv "$(DEB_BUILD)"/*.deb "$(DEB_DIST)/"
	rm -f "$(DEB_BUILD)"/*.buildinfo "$(DEB_BUILD)"/*.changes
	@ls -1 "$(DEB_DIST)"/*.deb

deb-lint:
	lintian --fail-on error --tag-display-limit 0 "$(DEB_DIST)"/*.deb

# Wheels per edition, and installing the agent as a systemd service.
# Included by the main Makefile, which defines PYTHON (the project venv's interpreter) and
# STAMP (its set-up marker); usable alone with `make -f mk/packaging.mk`.
#
#   make wheel [EDITION=community|commercial|upload]   -> dist/<edition>/*.whl
#   make install [EDITION=community|commercial|upload] [DESTDIR=] [PREFIX=/opt/pop-agent]
#   make uninstall [DESTDIR=] [PREFIX=/opt/pop-agent]
#
# EDITION=upload installs the community wheel plus the upload component.
# Offline installs: PIP_INSTALL_FLAGS="--no-index --find-links /path/to/wheelhouse".

PYTHON ?= .venv/bin/python
EDITION ?= community
DIST ?= dist
PREFIX ?= /opt/pop-agent
DESTDIR ?=
# The interpreter the installed virtual environment is built on: the system's, not the build venv's.
PYTHON3 ?= /usr/bin/python3
UNITDIR ?= /etc/systemd/system
TMPFILESDIR ?= /etc/tmpfiles.d
CONFDIR ?= /etc/pop-agent
PIP_INSTALL_FLAGS ?=
# The group agent.toml is installed with: the unit's supplementary group. Staging without root: CONF_GROUP=$$(id -gn).
CONF_GROUP ?= adm

PACKAGING_EDITIONS := community commercial upload
INSTALL_ROOT = $(DESTDIR)$(PREFIX)
INSTALL_CONF = $(DESTDIR)$(CONFDIR)
PIP = $(INSTALL_ROOT)/bin/python -m pip --disable-pip-version-check --no-input --quiet
# The base wheel an install carries: the upload component rides on the community one.
BASE_EDITION = $(if $(filter commercial,$(EDITION)),commercial,community)

# $(call build-wheel,<edition>): one wheel into $(DIST)/<edition>/, replacing what was there.
define build-wheel
rm -rf "$(DIST)/$(1)"
$(if $(filter upload,$(1)),$(PYTHON) -m build --wheel --no-isolation --outdir "$(DIST)/upload" packaging/upload,POP_AGENT_BUILD_EDITION=$(1) $(PYTHON) -m build --wheel --no-isolation --outdir "$(DIST)/$(1)" .)
endef

.PHONY: wheel install uninstall check-edition

check-edition:
	@case " $(PACKAGING_EDITIONS) " in *" $(EDITION) "*) ;; \
	  *) echo "EDITION must be one of: $(PACKAGING_EDITIONS) (got '$(EDITION)')" >&2; exit 2;; esac

wheel: check-edition $(STAMP)
	$(call build-wheel,$(EDITION))

install: check-edition $(STAMP)
	$(call build-wheel,$(BASE_EDITION))
	$(if $(filter upload,$(EDITION)),$(call build-wheel,upload))
	test -x "$(INSTALL_ROOT)/bin/python" || $(PYTHON3) -m venv "$(INSTALL_ROOT)"
	@# Switching editions at one version: the base wheel must replace the installed one,
	@# and a commercial install must not keep an upload component that owns some of its files.
	$(if $(filter commercial,$(EDITION)),$(PIP) uninstall -y pop-agent-upload)
	$(PIP) install $(PIP_INSTALL_FLAGS) "$(DIST)/$(BASE_EDITION)"/pop_agent-*.whl
	$(PIP) install --no-deps --force-reinstall "$(DIST)/$(BASE_EDITION)"/pop_agent-*.whl
	$(if $(filter upload,$(EDITION)),$(PIP) install --no-deps --force-reinstall "$(DIST)"/upload/pop_agent_upload-*.whl)
	@# A staged install (DESTDIR) must name its final paths in scripts and pyvenv.cfg.
	$(if $(DESTDIR),grep -rlI -F "$(INSTALL_ROOT)" "$(INSTALL_ROOT)/bin" "$(INSTALL_ROOT)/pyvenv.cfg" | xargs -r sed -i "s|$(INSTALL_ROOT)|$(PREFIX)|g")
	install -d -m 0755 "$(INSTALL_ROOT)/share/doc/pop-agent"
	install -m 0644 docs/*.md docs/heartbeat.schema.json "$(INSTALL_ROOT)/share/doc/pop-agent/"
	install -d -m 0755 "$(DESTDIR)$(UNITDIR)"
	sed "s|/opt/pop-agent|$(PREFIX)|g" systemd/pop-agent.service > "$(DESTDIR)$(UNITDIR)/pop-agent.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/pop-agent.service"
	install -d -m 0755 "$(INSTALL_CONF)"
	@# The operator's files are never overwritten.
	@# agent.toml may hold a token: 0640, group adm, which the unit reads it through (SupplementaryGroups=adm).
	test -e "$(INSTALL_CONF)/agent.toml" || install -m 0640 -g $(CONF_GROUP) systemd/agent.toml "$(INSTALL_CONF)/agent.toml"
	test -e "$(INSTALL_CONF)/pop-agent.env" || install -m 0600 systemd/pop-agent.env "$(INSTALL_CONF)/pop-agent.env"
	install -d -m 0755 "$(DESTDIR)$(TMPFILESDIR)"
	test -e "$(DESTDIR)$(TMPFILESDIR)/pop-agent.conf" || install -m 0644 systemd/pop-agent.tmpfiles "$(DESTDIR)$(TMPFILESDIR)/pop-agent.conf"
	@# LoadCredential= refuses to start the unit when the file is missing; empty means "no token".
	test -e "$(INSTALL_CONF)/central-token" || install -m 0600 /dev/null "$(INSTALL_CONF)/central-token"
	@echo "installed pop-agent ($(EDITION)) in $(PREFIX); next: systemctl daemon-reload && systemctl enable --now pop-agent"

uninstall:
	@# Only a directory that is a virtual environment is removed: PREFIX may be mistyped.
	if [ -f "$(INSTALL_ROOT)/pyvenv.cfg" ]; then rm -rf "$(INSTALL_ROOT)"; fi
	rm -f "$(DESTDIR)$(UNITDIR)/pop-agent.service"
	@echo "removed $(PREFIX) and the unit; kept $(CONFDIR), $(TMPFILESDIR)/pop-agent.conf and the state in /var/lib/pop-agent"

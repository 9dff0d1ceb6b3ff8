# har - a high-availability resolver.  `make` builds hard; `make run` starts
# it with the demo set-up; `make test` runs every test.  The targets that
# need Debian packages install the missing ones first (contrib/install-deps).

PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR = $(PREFIX)/sbin
MANDIR = $(PREFIX)/share/man
DOCDIR = $(PREFIX)/share/doc/har
# systemd reads units from /usr/local/lib/systemd/system and /usr/lib/...
UNITDIR = $(PREFIX)/lib/systemd/system
PYTHON = /usr/bin/python3
# The system tests mostly wait on events, so several run at once
# (pytest-xdist); tests/system/conftest.py keeps the heavy ones apart.
TEST_JOBS = 3

CC ?= cc
PKGS = libcares libcurl sqlite3 libconfuse liburiparser ldns libssl libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS ?= -O2 -g
WARNINGS = -std=c11 -Wall -Wextra $(if $(CI),-Werror) $(if $(WERROR),-Werror)
CPPFLAGS += -D_GNU_SOURCE
ifeq ($(SANITIZE),1)
CFLAGS += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
LIBS = $(PKG_LIBS) -lev -lm -lpthread

MODULES = config.o config_values.o address.o dns.o server.o upstream.o upstream_udp.o \
	registry.o select.o check.o check_http.o check_tcp.o store.o store_writer.o \
	store_lock.o log.o querylog.o relay.o activation.o descriptors.o metrics.o \
	metrics_text.o
OBJECTS = har.o notify.o $(MODULES)
UNIT_TESTS = tests/unit/test_config tests/unit/test_dns tests/unit/test_select \
	tests/unit/test_check tests/unit/test_activation

.PHONY: all deps run test unit system bench fleet fuzz install uninstall deb clean lint print-modules print-packages

all: hard

deps:
	@contrib/install-deps build

hard: $(OBJECTS)
	$(CC) $(LDFLAGS) -o $@ $(OBJECTS) $(LIBS)

%.o: %.c har.h
	$(CC) $(CPPFLAGS) $(WARNINGS) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<


tests/unit/%: tests/unit/%.c tests/unit/unit.h tests/unit/fixture.h $(MODULES)
	$(CC) $(CPPFLAGS) $(WARNINGS) $(CFLAGS) $(PKG_CFLAGS) -I. -o $@ $< $(MODULES) $(LDFLAGS) $(LIBS)

run:
	@contrib/install-deps run
	@$(MAKE) --no-print-directory hard
	contrib/demo/run

test:
	@contrib/install-deps test
	@$(MAKE) --no-print-directory hard $(UNIT_TESTS)
	@$(MAKE) --no-print-directory unit system

unit: $(UNIT_TESTS)
	@failed=0; for t in $(UNIT_TESTS); do ./$$t || failed=1; done; exit $$failed

system: hard
	HAR_SANITIZED=$(SANITIZE) $(PYTHON) -m pytest -q -n $(TEST_JOBS) \
	    --dist loadgroup tests/system $(PYTEST_ARGS)

bench:
	@contrib/install-deps bench
	@$(MAKE) --no-print-directory hard
	bench/run

# A fleet of hards on this machine (bench/fleet); FLEET_* knobs in bench/README.md.
fleet:
	@contrib/install-deps run
	@$(MAKE) --no-print-directory hard
	bench/fleet

fuzz:
	@contrib/install-deps fuzz
	tests/fuzz/run

print-modules:
	@echo $(MODULES:.o=)

print-packages:
	@echo $(PKGS)

lint:
	mandoc -T lint -W warning hard.8 har.conf.5 contrib/har-status.8

# Everything a host needs: the daemon, har-status, the manual pages, the
# systemd units naming the installed programs, the example configuration
# and cron file.  DESTDIR stages it all (packaging); the paths inside name
# PREFIX (and UNITDIR) only: the sources say /usr/local, which INSTALLED
# replaces, everywhere in the manual pages, outside comments elsewhere.
INSTALLED = s|/usr/local/lib/systemd/system|$(UNITDIR)|g; \
	s|/usr/local/sbin|$(SBINDIR)|g; s|/usr/local/share/doc/har|$(DOCDIR)|g

# $(call install_as,SED SCRIPT,SOURCE,TARGET): mode 644, written whole.
define install_as
	sed '$(1)' $(2) >$(3).tmp
	chmod 644 $(3).tmp
	mv $(3).tmp $(3)

endef

install: hard
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	install -m 755 hard $(DESTDIR)$(SBINDIR)/hard
	install -m 755 contrib/har-status $(DESTDIR)$(SBINDIR)/har-status
	$(call install_as,$(INSTALLED),hard.8,$(DESTDIR)$(MANDIR)/man8/hard.8)
	$(call install_as,$(INSTALLED),har.conf.5,$(DESTDIR)$(MANDIR)/man5/har.conf.5)
	$(call install_as,$(INSTALLED),contrib/har-status.8,$(DESTDIR)$(MANDIR)/man8/har-status.8)
	$(call install_as,/^#/!{ $(INSTALLED); },contrib/har.service,$(DESTDIR)$(UNITDIR)/har.service)
	$(call install_as,/^#/!{ $(INSTALLED); },contrib/har-prometheus.service,$(DESTDIR)$(UNITDIR)/har-prometheus.service)
	$(call install_as,/^#/!{ $(INSTALLED); },contrib/har-prometheus.timer,$(DESTDIR)$(UNITDIR)/har-prometheus.timer)
	$(call install_as,/^#/!{ $(INSTALLED); },contrib/har-prometheus.cron,$(DESTDIR)$(DOCDIR)/har-prometheus.cron)
	$(call install_as,/^#/!{ $(INSTALLED); },contrib/har.socket,$(DESTDIR)$(UNITDIR)/har.socket)
	install -m 644 har.conf.example contrib/resolv.conf.md $(DESTDIR)$(DOCDIR)

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/hard $(DESTDIR)$(SBINDIR)/har-status \
		$(DESTDIR)$(MANDIR)/man8/hard.8 $(DESTDIR)$(MANDIR)/man5/har.conf.5 \
		$(DESTDIR)$(MANDIR)/man8/har-status.8 \
		$(DESTDIR)$(UNITDIR)/har.service $(DESTDIR)$(UNITDIR)/har.socket \
		$(DESTDIR)$(UNITDIR)/har-prometheus.service \
		$(DESTDIR)$(UNITDIR)/har-prometheus.timer \
		$(DESTDIR)$(DOCDIR)/har.conf.example $(DESTDIR)$(DOCDIR)/resolv.conf.md \
		$(DESTDIR)$(DOCDIR)/har-prometheus.cron
	rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true

# The Debian package (debian/), with Debian's own tools: dpkg-buildpackage
# leaves har_VERSION-REVISION_ARCH.deb in the parent directory.
deb:
	@contrib/install-deps deb
	dpkg-buildpackage -us -uc -b

clean:
	rm -f hard *.o $(UNIT_TESTS)
	rm -rf tests/system/__pycache__ .pytest_cache

# A real OCI distribution registry for the registry client's tests: the binary of Debian's docker-registry
# package (the CNCF distribution registry), taken out of the .deb rather than installing the package, which
# would start a registry service. The tests start it themselves on a free loopback port; without apt they skip.
# `make test` depends on $(REGISTRY_BIN).
REGISTRY_BIN := $(BIN)/docker-registry

.PHONY: registry-server
registry-server: $(REGISTRY_BIN)

$(REGISTRY_BIN): | $(VENV)/bin/python
	cd $(VENV) && { apt-get download -qq docker-registry 2>/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq docker-registry; }; } \
		&& dpkg-deb --fsys-tarfile docker-registry_*.deb | tar -xO ./usr/bin/docker-registry > bin/docker-registry.part \
		&& chmod +x bin/docker-registry.part && mv bin/docker-registry.part bin/docker-registry \
		|| echo "docker-registry not installed: the registry tests will be skipped" >&2
	rm -f $(VENV)/docker-registry_*.deb $(VENV)/bin/docker-registry.part

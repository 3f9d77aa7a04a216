.PHONY: test demo

# Lint, type check and the whole suite; prepares the machine first (scripts/test-env.sh).
# A subset: make test ARGS="tests/unit -k config"
test:
	bash scripts/test.sh $(ARGS)

# The end-to-end demonstration (scripts/demo.sh).
demo:
	bash scripts/demo.sh

"""The load generator and its reports (SPEC §11): profiles, open-model schedules, the generator
processes, resource snapshots, the versioned JSON report, thresholds, the Markdown report and compare."""

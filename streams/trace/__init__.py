"""The trace index of the audit log: where is my event, and the data tracker."""

"""Analytics: per-link series and breakdowns, account totals, raw clicks as JSON pages or streamed CSV."""

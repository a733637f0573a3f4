"use strict";
Keel.drawTrend(document.getElementById("trend-plot"), JSON.parse(document.getElementById("trend").textContent));

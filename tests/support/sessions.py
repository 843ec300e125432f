"""An ACN session as the API returns it, for the contract tests."""

from __future__ import annotations

SESSION = {
    "_id": "5e225f9ff9af8b5c26d21716", "clusterID": "0039",
    "connectionTime": "Wed, 01 Jan 2020 18:10:34 GMT",
    "disconnectTime": "Wed, 01 Jan 2020 21:05:40 GMT",
    "doneChargingTime": "Wed, 01 Jan 2020 19:22:56 GMT", "kWhDelivered": 2.328,
    "sessionID": "2_39_127_19_2020-01-01 18:10:34.057445", "siteID": "0002", "spaceID": "CA-309",
    "stationID": "2-39-127-19", "timezone": "America/Los_Angeles", "userID": "000000710",
    "userInputs": [{"WhPerMile": 261, "kWhRequested": 7.83, "milesRequested": 30,
                    "minutesAvailable": 458, "modifiedAt": "Wed, 01 Jan 2020 18:10:53 GMT",
                    "paymentRequired": True, "requestedDeparture": "Thu, 02 Jan 2020 01:48:34 GMT",
                    "userID": 710}],
}
